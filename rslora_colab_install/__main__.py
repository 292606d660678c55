"""``python -m rslora_colab_install [REQUIREMENT]``: the notebooks' Colab install, from a shell."""

import sys

from rslora_colab_install import main

sys.exit(main())
