"""First-letter feature absorption study of SAEs on a language model (Chanin et al., "A is for
Absorption", with SAEBench's scoring semantics).

One file per idea: vocabulary.py (alphabetic tokens, sample, stratified split), prompts.py (ICL
prompts sharing a prefix, word position from the tokenization), extraction.py (activations on the
prefix's key/value cache, ICL answers), probe.py (one-vs-rest letter probe, precision/recall/F1),
hook_setup.py (the cached per-hook setup), main_latents.py (k-sparse probing, feature splitting,
encoder cosine), scores.py (absorption fraction, full absorption, aggregate), evaluate.py (one SAE
on a setup), job.py (AbsorptionConfig and run_absorption).
"""

from llm.absorption.evaluate import SAEAbsorption, evaluate_sae
from llm.absorption.hook_setup import HookSetup, SetupConfig, prepare_setup
from llm.absorption.job import AbsorptionConfig, run_absorption

__all__ = [
    "AbsorptionConfig",
    "HookSetup",
    "SAEAbsorption",
    "SetupConfig",
    "evaluate_sae",
    "prepare_setup",
    "run_absorption",
]
