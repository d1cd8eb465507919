"""The backlog builder's worker process (`python -m projections.backlog_worker`): see projections/backlog.py."""

from projections.backlog import main

if __name__ == "__main__":
    main()
