"""Privacy, measured and defended: inversion attacks on what leaves the device.

* :mod:`.target`: what is attacked (a cut, a codec, a defence) and what the
  attacker sees of it (the codec's decoded bytes);
* :mod:`.attacks`: white-box rMLE, the black-box inverse network, the
  query-free shadow head, and their adaptive versions;
* :mod:`.defences`: Gaussian noise and feature dropout (the variational
  bottleneck is a model, :class:`~collabinfer.model.bottleneck.VariationalEncoder`);
* :mod:`.metrics`: SSIM, PSNR and recognisability;
* :mod:`.aux`: the attacker's data, kept disjoint from the scored images.

The threat assessment that runs them all is
:mod:`collabinfer.experiments.privacy`. Why this package sits above
``train``: the attacks are training recipes and reuse its loop.
"""
