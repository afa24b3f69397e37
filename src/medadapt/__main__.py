from medadapt.cli import main

raise SystemExit(main())
