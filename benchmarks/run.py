"""Reproduce the README's results tables (see ``python benchmarks/run.py --help``)."""
from recbole_llm.benchmark import main

if __name__ == "__main__":
    main()
