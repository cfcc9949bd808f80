from tokenreel.cli import main

raise SystemExit(main())
