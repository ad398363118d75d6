"""The paper's CIFAR ResNet-18 as a Hugging Face model (3x3 stem, no max-pool, BasicBlocks 64-128-256-512).

Registered with `AutoConfig` / `AutoModelForImageClassification` when `hf_cskd` is imported, so it
trains with `CSKDTrainer`, saves as safetensors and reloads with `from_pretrained`, no remote code.
Widths and depths are configurable (the study uses a narrow variant that fits a CPU budget).
"""

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForImageClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention


class CifarResNetConfig(PretrainedConfig):
    model_type = "cifar_resnet"

    def __init__(
        self,
        num_channels: int = 3,
        hidden_sizes: list[int] | None = None,
        depths: list[int] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_channels = num_channels
        self.hidden_sizes = list(hidden_sizes or [64, 128, 256, 512])
        self.depths = list(depths or [2, 2, 2, 2])
        if len(self.hidden_sizes) != len(self.depths):
            raise ValueError(f"hidden_sizes {self.hidden_sizes} and depths {self.depths} must have the same length.")


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNetPreTrainedModel(PreTrainedModel):
    config_class = CifarResNetConfig
    base_model_prefix = "resnet"
    main_input_name = "pixel_values"

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            bound = 1 / module.in_features**0.5  # PyTorch's default initialization
            nn.init.uniform_(module.weight, -bound, bound)
            nn.init.uniform_(module.bias, -bound, bound)


class CifarResNetForImageClassification(CifarResNetPreTrainedModel):
    def __init__(self, config: CifarResNetConfig):
        super().__init__(config)
        width = config.hidden_sizes[0]
        self.stem = nn.Sequential(
            nn.Conv2d(config.num_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        blocks, in_channels = [], width
        for stage, (out_channels, depth) in enumerate(zip(config.hidden_sizes, config.depths)):
            for i in range(depth):
                blocks.append(BasicBlock(in_channels, out_channels, 2 if stage > 0 and i == 0 else 1))
                in_channels = out_channels
        self.layers = nn.Sequential(*blocks)
        self.classifier = nn.Linear(in_channels, config.num_labels)
        self.post_init()

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None
    ) -> ImageClassifierOutputWithNoAttention:
        features = self.layers(self.stem(pixel_values)).mean(dim=(2, 3))
        logits = self.classifier(features)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits)


AutoConfig.register(CifarResNetConfig.model_type, CifarResNetConfig)
AutoModelForImageClassification.register(CifarResNetConfig, CifarResNetForImageClassification)
