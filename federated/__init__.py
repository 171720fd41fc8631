# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Federated training of the AXUNet bundle with NVIDIA FLARE (see federated/README.md): the site script
(``client.py``), the FedAvg job (``job.py``), generated site data (``sites.py``) and the federated-versus-local
comparison (``compare.py``). Not part of the package or the zoo bundle."""
