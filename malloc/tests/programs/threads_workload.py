"""A multi-threaded workload of dicts, lists and strings, deterministic in its output: run
with and without libcorealloc.so preloaded, the two outputs must be identical."""

import hashlib
import sys
import threading

THREADS = 8
STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 40000


def work(seed, results, index, shared, lock):
    state = seed
    table = {}
    rows = []
    words = []
    for step in range(STEPS):
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        key = "key-%d" % (state % 20000)
        value = table.get(key, "")
        table[key] = value + str(step % 97) if len(value) < 300 else "reset-%d" % step
        rows.append([step, key, state % 1000, {"n": step, "s": key * (state % 3)}])
        if len(rows) > 4000:
            del rows[: len(rows) // 2]
        words.append(key.upper() * (state % 5) + "." + str(state)[:7])
        if len(words) > 800:
            words = [" ".join(words)[-20000:]]
        if step % 1000 == 0:
            table = {k: v for k, v in table.items() if (len(k) + len(v)) % 5}
            with lock:
                shared.setdefault(index, []).append(len(table))
    digest = hashlib.sha256()
    for key in sorted(table):
        digest.update(key.encode())
        digest.update(table[key].encode())
    digest.update(repr(rows[-50:]).encode())
    digest.update("".join(words).encode())
    results[index] = (len(table), len(rows), sum(map(len, words)), digest.hexdigest())


def main():
    results = [None] * THREADS
    shared = {}
    lock = threading.Lock()
    threads = [
        threading.Thread(target=work, args=(index + 1, results, index, shared, lock))
        for index in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, result in enumerate(results):
        print(index, *result)
    print("sizes", sum(sum(sizes) for sizes in shared.values()))


main()
