"""python -m adapterhub.bench -> the runner (same arguments as `adapterhub bench`)."""
from . import main

raise SystemExit(main())
