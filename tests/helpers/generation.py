"""Tiny randomly initialised diffusers/transformers components for the generation tests."""

from __future__ import annotations

from pathlib import Path

import torch

from dmlsynth.generation.sampler import Components
from dmlsynth.generation.tokenizer import build_tokenizer

WORDS = ["a digit zero, thin strokes, slanted left, upright, large", "a photo of a bird, blue wing color, red car"]


def tiny_text(folder: Path, width: int = 16):
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer(WORDS, folder, max_length=12)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=12, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )
    ).eval()
    return tokenizer, text_encoder


def tiny_unet(in_channels: int, sample_size: int, cross_dim: int = 16):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(1)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross_dim,
        attention_head_dim=4, norm_num_groups=4,
    ).eval()


def tiny_pixel_components(folder: Path) -> Components:
    from diffusers import DDPMScheduler

    tokenizer, text_encoder = tiny_text(folder)
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    return Components(tiny_unet(1, 8), text_encoder, tokenizer, scheduler, vae=None, image_channels=1)


def save_tiny_stable_diffusion(folder: Path) -> Path:
    """A Stable-Diffusion-layout folder (unet, vae, text_encoder, tokenizer, scheduler) with random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler

    tokenizer, text_encoder = tiny_text(folder / "tokenizer_src")
    torch.manual_seed(2)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
        sample_size=16,
    )
    tiny_unet(4, 8).save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    DDIMScheduler(
        num_train_timesteps=100, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, clip_sample=False
    ).save_pretrained(
        folder / "scheduler"
    )
    return folder


CLIP_WORDS = ["a photo of a bird, a digit zero one two three four", "black footed albatross laysan sooty"]


def save_tiny_clip(folder: Path, image_size: int = 16) -> Path:
    """A CLIPModel with random weights + its processor (offline tokenizer), saved with save_pretrained."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = build_tokenizer(CLIP_WORDS, folder / "tokenizer_src", max_length=16)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": image_size, "patch_size": 8},
        projection_dim=8,
    )  # fmt: skip
    torch.manual_seed(3)
    CLIPModel(config).eval().save_pretrained(folder)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(folder)
    return folder


CAPTION_WORDS = "a bird on branch with blue red wings flying over water digit thin thick stroke".split()


def save_tiny_captioner(folder: Path, image_size: int = 16) -> Path:
    """A BLIP captioning model with random weights + its processor (a BERT word-piece vocabulary written
    here, no download), saved with save_pretrained: loads through transformers' image-text-to-text pipeline."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(CAPTION_WORDS))]) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    config = BlipConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "encoder_hidden_size": 16, "max_position_embeddings": 32,
                     "bos_token_id": 2, "sep_token_id": 3, "pad_token_id": 0},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": image_size, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(4)
    BlipForConditionalGeneration(config).eval().save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}), tokenizer=tokenizer).save_pretrained(folder)
    return folder
