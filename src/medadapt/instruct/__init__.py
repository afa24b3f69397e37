"""Pathology instruction data, multimodal-LLM fine-tuning and evaluation (PathInsight, Wu et al.).

The pipeline of the PathInsight paper on Hugging Face transformers + peft, scaled out with
accelerate / DeepSpeed rather than anything home-made (user guide: ``docs/instruct.md``):

* :mod:`~medadapt.instruct.build` (``medadapt instruct build``): source adapters
  (:mod:`~medadapt.instruct.sources`), cleaning and CLIP filters (:mod:`~medadapt.instruct.filters`),
  ChatML JSONL (:mod:`~medadapt.instruct.records`), fixed split, stats, LLaMA-Factory / ms-swift
  exports (:mod:`~medadapt.instruct.export`) -- paper Section 2.1.
* :mod:`~medadapt.instruct.train` (``medadapt instruct train``): full / LoRA / QLoRA SFT, loss on
  assistant tokens only, image tokens never truncated (:mod:`~medadapt.instruct.encode`) --
  paper Section 2.2.
* :mod:`~medadapt.instruct.eval` (``medadapt instruct eval``): greedy generation, label mapping,
  P/R/F1, BLEU, ROUGE, VQA scores (:mod:`~medadapt.instruct.scoring`), comparison table --
  paper Section 3, Table 2.
* :mod:`~medadapt.instruct.tiny`: a tiny random LLaVA for offline tests and demos.

Heavy libraries (torch, transformers, peft) are imported only where needed.
"""
from medadapt.instruct.config import BuildConfig, EvalConfig, LoraConfig, TrainConfig, load

__all__ = ["BuildConfig", "TrainConfig", "EvalConfig", "LoraConfig", "load"]
