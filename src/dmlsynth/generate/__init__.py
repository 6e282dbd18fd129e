"""BLenDeR image generation (METHODS.md §7).

- :mod:`~dmlsynth.generate.blend`: the residual set operators (pure tensor functions).
- :mod:`~dmlsynth.generate.sampler`: one denoising loop on diffusers components.
- :mod:`~dmlsynth.generate.prompts`: per-class attribute prompts.
- :mod:`~dmlsynth.generate.embedded`: the small prompt-conditioned generator trained in the workflow.
- :mod:`~dmlsynth.generate.stable_diffusion`: loading Stable Diffusion (or any diffusers folder).
- :mod:`~dmlsynth.generate.run`: per-class generation and the image-set manifests.
- :mod:`~dmlsynth.generate.quality`: fidelity / diversity report and sample grids.
"""
