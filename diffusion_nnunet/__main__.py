from diffusion_nnunet.cli.main import main

raise SystemExit(main())
