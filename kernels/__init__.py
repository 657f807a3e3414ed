"""fastvae's Triton kernels (installed as ``fastvae.kernels``), one file per fused op:
``elbo.py`` (row pass + deterministic finish; also runs gaussian_log_prob and
kl_standard_normal), ``iwae.py``, ``reparameterize.py`` (in-kernel Philox),
``scale.py`` (the losses' backward: saved gradients times grad_output, read on the
device), and the shared ``@triton.jit`` math in ``_math.py``. Host code and autograd wiring live in
``fastvae.backends.triton_backend``; importing this package needs ``triton``."""
