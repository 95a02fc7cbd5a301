"""Tasks of every modality as data: the transformers Auto class, the processor that prepares inputs, the PEFT task
type, and which preprocessor settings matter. `hub.plan_finetune` and the fine-tuning script read these rows;
`hub.evaluate` reports a model's processor settings with them.

    row = task_row("image-classification")   # Task(modality="vision", auto_class="AutoModelForImageClassification", ...)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from archsmith.errors import ArchsmithError


@dataclass(frozen=True)
class Task:
    modality: str  # text | vision | audio | multimodal | diffusion
    auto_class: str  # transformers Auto class the script loads
    processor: str  # AutoTokenizer | AutoImageProcessor | AutoFeatureExtractor | AutoProcessor
    peft_task_type: str | None = None  # PEFT TaskType; None: LoRA on the named modules only
    head: str | None = None  # the freshly initialised head kept trainable beside LoRA (modules_to_save)
    num_labels: bool = False  # the head's size comes from the user's classes


TEXT_CLS = Task("text", "AutoModelForSequenceClassification", "AutoTokenizer", "SEQ_CLS", num_labels=True)
TASKS: dict[str, Task] = {
    "text-generation": Task("text", "AutoModelForCausalLM", "AutoTokenizer", "CAUSAL_LM"),
    "text-classification": TEXT_CLS,
    "sentiment-analysis": TEXT_CLS,
    "token-classification": Task("text", "AutoModelForTokenClassification", "AutoTokenizer", "TOKEN_CLS", num_labels=True),
    "question-answering": Task("text", "AutoModelForQuestionAnswering", "AutoTokenizer", "QUESTION_ANS"),
    "fill-mask": Task("text", "AutoModelForMaskedLM", "AutoTokenizer"),
    "summarization": Task("text", "AutoModelForSeq2SeqLM", "AutoTokenizer", "SEQ_2_SEQ_LM"),
    "translation": Task("text", "AutoModelForSeq2SeqLM", "AutoTokenizer", "SEQ_2_SEQ_LM"),
    "text2text-generation": Task("text", "AutoModelForSeq2SeqLM", "AutoTokenizer", "SEQ_2_SEQ_LM"),
    "feature-extraction": Task("text", "AutoModel", "AutoTokenizer", "FEATURE_EXTRACTION"),
    "sentence-similarity": Task("text", "AutoModel", "AutoTokenizer", "FEATURE_EXTRACTION"),
    "image-classification": Task("vision", "AutoModelForImageClassification", "AutoImageProcessor", head="classifier", num_labels=True),
    "object-detection": Task("vision", "AutoModelForObjectDetection", "AutoImageProcessor", num_labels=True),
    "image-segmentation": Task("vision", "AutoModelForSemanticSegmentation", "AutoImageProcessor", num_labels=True),
    "automatic-speech-recognition": Task("audio", "AutoModelForSpeechSeq2Seq", "AutoProcessor", "SEQ_2_SEQ_LM"),
    "audio-classification": Task("audio", "AutoModelForAudioClassification", "AutoFeatureExtractor", head="classifier", num_labels=True),
    "zero-shot-image-classification": Task("multimodal", "AutoModel", "AutoProcessor", "FEATURE_EXTRACTION"),
    "image-text-to-text": Task("multimodal", "AutoModelForImageTextToText", "AutoProcessor", "CAUSAL_LM"),
    # diffusers pipelines: the denoiser learns, the rest is frozen (archsmith.pipelines.finetune_plan)
    "text-to-image": Task("diffusion", "DiffusionPipeline", "CLIPTokenizer"),
    "unconditional-image-generation": Task("diffusion", "DiffusionPipeline", ""),
}
# speech models trained with CTC (wav2vec2, HuBERT) rather than a decoder (Whisper): their Auto class by architecture
CTC_SUFFIX = "ForCTC"
# the preprocessor settings that decide what the model sees, as transformers' preprocessor_config.json names them
PROCESSOR_KEYS = ("size", "crop_size", "image_mean", "image_std", "do_normalize", "do_resize", "resample", "rescale_factor",
                  "sampling_rate", "feature_size", "num_mel_bins", "n_fft", "hop_length", "chunk_length", "n_samples",
                  "padding_side", "return_attention_mask", "image_processor_type", "feature_extractor_type", "processor_class")
MAX_VALUE = 200  # characters of a string setting kept


def task_row(task: str, architectures: list[str] | None = None) -> Task:
    """The row for `task`; a speech model whose architecture ends in ForCTC loads with AutoModelForCTC."""
    if task not in TASKS:
        raise ArchsmithError("task", f"must be one of {', '.join(TASKS)}; got {task!r:.60}")
    row = TASKS[task]
    if task == "automatic-speech-recognition" and any(str(a).endswith(CTC_SUFFIX) for a in architectures or []):
        return Task("audio", "AutoModelForCTC", "AutoProcessor")
    return row


def processor_settings(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The settings of a preprocessor_config.json that decide the model's inputs (sizes, normalisation, sampling
    rate), as plain values; None without one."""
    if not isinstance(config, dict):
        return None

    def plain(value: Any) -> Any:
        if isinstance(value, str):
            return value[:MAX_VALUE]
        if isinstance(value, float) and not math.isfinite(value):
            return None  # JSON from outside may say NaN or Infinity
        if isinstance(value, (bool, int, float)) or value is None:
            return value
        if isinstance(value, list):
            return [plain(v) for v in value[:8]]
        if isinstance(value, dict):
            return {str(k)[:40]: plain(v) for k, v in list(value.items())[:8]}
        return None

    return {key: plain(config[key]) for key in PROCESSOR_KEYS if key in config}


def modality_of(task: str | None, config: dict[str, Any] | None) -> str | None:
    """text | vision | audio | multimodal from the pipeline tag, else from the config's sub-configs; None when unknown."""
    if task in TASKS:
        return TASKS[task].modality
    config = config or {}
    if "vision_config" in config and "text_config" in config:
        return "multimodal"
    if any(k in config for k in ("num_mel_bins", "conv_dim", "sampling_rate")):
        return "audio"
    if any(k in config for k in ("image_size", "num_channels", "patch_size")):
        return "vision"
    return "text" if config else None
