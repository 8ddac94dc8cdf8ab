from fscsync.cli import main

raise SystemExit(main())
