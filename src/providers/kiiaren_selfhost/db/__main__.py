"""``python -m kiiaren_selfhost.db``: migrate the self-host database (see :mod:`.migrate`)."""

from kiiaren_selfhost.db.migrate import main

raise SystemExit(main())
