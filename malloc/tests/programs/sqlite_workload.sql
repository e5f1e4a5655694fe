-- Inserts and queries a few hundred thousand rows; the output must be the same with and
-- without libcorealloc.so preloaded. The test appends 50,000 single-row INSERTs in one
-- transaction before the queries at the end.
CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, category INTEGER, price REAL, note TEXT);
WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 250000)
INSERT INTO items SELECT x, 'item-' || x, x % 97, (x * 37 % 1000) / 10.0, printf('%.*c', x % 60, 'z') FROM n;
CREATE INDEX items_category ON items(category, price);
CREATE INDEX items_name ON items(name);
SELECT count(*), sum(price), min(name), max(name) FROM items;
SELECT category, count(*), round(avg(price), 3) FROM items GROUP BY category ORDER BY category LIMIT 10;
SELECT name, price FROM items WHERE category = 42 ORDER BY price DESC, id LIMIT 5;
UPDATE items SET note = upper(note) || '!' WHERE id % 3 = 0;
DELETE FROM items WHERE id % 10 = 0;
SELECT count(*), sum(length(note)), total(price) FROM items;
SELECT group_concat(name, ',') FROM (SELECT name FROM items ORDER BY name LIMIT 20);
SELECT count(*) FROM items a JOIN items b ON a.id = b.id + 1 WHERE a.category = b.category + 1;
SELECT category, group_concat(id, ' ') FROM (SELECT category, id FROM items WHERE id < 400 ORDER BY id) GROUP BY category HAVING count(*) > 3 ORDER BY category LIMIT 5;
