"""precompute: labelled audio -> normalized log-mel shards, once per feature config.

Who owns what (the data flows down this list):

``cli``, ``commands``, ``options``   the ``precompute`` command line: flags, what each
                                     subcommand does, the option groups the flags set
``config_files``                     feature configs: presets, TOML files, ``--set``
``inputs``                           reading annotations, class lists and audio file lists
``plan``, ``packing``                rows grouped by recording and packed into shard jobs
``run``                              the driver: lock, resume, parallel jobs, index last
``lock``, ``resume``                 one run per directory; what earlier runs left and why a
                                     shard is built again
``annotation_report``                what a labelled run logs and records of its annotations
``backends``                         the joblib backends (loky, threading, dask, ray)
``job``, ``shard_result``            one shard job in a worker, and what it reports back
``audio``, ``windows``, ``mel``,     decoding, where windows go and how they are labelled,
``mel_kernels``                      the log-mel of a window
``publish``                          a feature set written to a URL through a local stage
``inspection``                       ``precompute inspect``'s summary
``demo``, ``demo_formats``           the synthetic RFCX-like dataset, and it in other formats
``errors``                           the precompute side's own errors

The on-disk format (index, shards, codecs, verify) is ``melshards``'; precompute never imports
the loader, the experiments, Keras, TensorFlow, torch or matplotlib.
"""
