# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""BraTS data, each module importing only those before it: label values and regions (:mod:`.labels`); case
discovery in every layout (:mod:`.cases`); image formats and ITK headers (:mod:`.formats`); file checks
(:mod:`.integrity`); the chains' loading transforms (:mod:`.pipeline`); datalists, case selection and the loader
that leaves out a failing case (:mod:`.datalist`); the slice cache (:mod:`.slices`). Import them by their full
names (the configs' ``_target_`` does)."""
