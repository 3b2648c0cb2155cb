from ecg_rnn.cli import main

raise SystemExit(main())
