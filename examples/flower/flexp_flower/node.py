"""A node's flexp client, as a process of its own: `python -m flexp_flower.node ADDRESS TLS ID
DATA GLOBAL_TEST`. It takes part in the run until flexp's server finishes it."""

import sys

import flexp


def main() -> None:
    address, tls, k, data, global_test = sys.argv[1:6]
    flexp.Client(address, tls, int(k), data, global_test=global_test, timeout=600).run()


if __name__ == "__main__":
    main()
