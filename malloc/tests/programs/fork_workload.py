"""A multi-threaded Python program that forks while its threads allocate; every child
builds dicts, lists and strings and reports a checksum through its exit status. The output
must be the same with and without libcorealloc.so preloaded."""

import os
import sys
import threading

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 20
stop = threading.Event()


def churn(seed):
    state = seed
    kept = []
    while not stop.is_set():
        state = (state * 1103515245 + 12345) % 2**31
        kept.append({"k%d" % (state % 500): ["x" * (state % 300)] * (state % 7)})
        if len(kept) > 2000:
            kept = kept[1000:]


def child_work(round_number):
    table = {}
    for step in range(20000):
        table["%d-%d" % (round_number, step % 3000)] = [step] * (step % 11) + ["s" * (step % 50)]
    text = ",".join(sorted(table))
    return (len(table) + len(text) + sum(len(v) for v in table.values())) % 251


def main():
    threads = [threading.Thread(target=churn, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    codes = []
    for round_number in range(ROUNDS):
        pid = os.fork()
        if pid == 0:
            os._exit(child_work(round_number))
        _, status = os.waitpid(pid, 0)
        codes.append(os.waitstatus_to_exitcode(status))
    stop.set()
    for thread in threads:
        thread.join()
    print("children", " ".join(map(str, codes)))


main()
