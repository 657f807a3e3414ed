"""fastvae's Triton kernels (installed as ``fastvae.kernels``), one file per fused op:
``elbo.py`` (row pass and free bits; also runs gaussian_log_prob and kl_standard_normal),
``iwae_bound.py``, ``reparameterize.py`` (in-kernel Philox), ``scale.py`` (the losses'
backward: saved gradients times grad_output, read on the device), ``reduce.py`` (the
deterministic batch sum and column sums shared by the losses) and the shared
``@triton.jit`` math and load/store helpers in ``_math.py``. Host launch code lives in
``fastvae.backends.triton_backend`` (one file per op), autograd in ``fastvae.ops``;
importing this package needs ``triton``."""
