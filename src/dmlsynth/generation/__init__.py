"""BLenDeR image generation (docs/methods.md §7).

- :mod:`~dmlsynth.generation.blend`: the residual set operators (pure tensor functions).
- :mod:`~dmlsynth.generation.sampler`: one denoising loop on diffusers components.
- :mod:`~dmlsynth.generation.prompts`: per-class attribute prompts.
- :mod:`~dmlsynth.generation.embedded`: the small prompt-conditioned generator trained in the workflow.
- :mod:`~dmlsynth.generation.stable_diffusion`: loading Stable Diffusion (or any diffusers folder).
- :mod:`~dmlsynth.generation.run`: per-class generation and the image-set manifests.
- :mod:`~dmlsynth.generation.quality`: fidelity / diversity report and sample grids.
"""
