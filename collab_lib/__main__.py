from collab_lib.cli import main

raise SystemExit(main())
