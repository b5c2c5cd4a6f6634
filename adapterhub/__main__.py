from .cli import main

if __name__ == "__main__":   # not when a spawned worker (score-file --workers) imports this module
    raise SystemExit(main())
