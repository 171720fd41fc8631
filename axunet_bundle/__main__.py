# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""``python -m axunet_bundle COMMAND``: see ``python -m axunet_bundle --help``."""

from .cli import main

if __name__ == "__main__":
    main()
