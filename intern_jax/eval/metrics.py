"""Scores of generated text beyond a plain match: SQuAD's token F1, BLEU (``sacrebleu``), ROUGE
(``rouge-score``), the unbiased pass@k estimator, the code-block post-processor, and running generated
code against its tests in a separate, resource-limited Python process.

The code runner is evaluation's own: a fresh ``python -I`` in an empty temporary directory, in its own
process group (killed whole at the time limit), with CPU-time, address-space, file-size and open-file
limits and a minimal environment. It keeps runaway or careless code from hurting the evaluation; it is
not a security boundary against hostile code (no network or filesystem isolation) — run untrusted
models' code in a container.
"""

from __future__ import annotations

import collections
import os
import re
import string
import subprocess
import sys
import tempfile

import numpy as np

# ---------------------------------------------------------------------------
# Text


def code_block(text: str) -> str:
    """The first fenced code block of ``text`` (```` ```python ... ``` ````, an unclosed fence runs to the end);
    without a fence, the text itself (a completion that continues the prompt's code)."""
    match = re.search(r"```[ \t]*[\w+-]*[ \t]*\n(.*?)(?:```|\Z)", text or "", flags=re.DOTALL)
    return match.group(1) if match else (text or "")


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = str(text).lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token-level F1 of the normalised texts (0-1); two empty texts score 1."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def corpus_bleu(predictions: list[str], references: list[str]) -> float:
    """sacreBLEU's corpus BLEU (0-100; its default 13a tokenizer, exponential smoothing), one reference each."""
    import sacrebleu  # noqa: PLC0415  (only BLEU tasks need it)

    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (0-1) from Google's ``rouge-score`` (Porter stemming on)."""
    return rouge_scores(prediction, reference)["rougeL"]


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures (0-1) from ``rouge-score`` (Porter stemming on)."""
    return {name: score.fmeasure for name, score in _rouge_scorer().score(reference, prediction).items()}


_SCORER = None


def _rouge_scorer():
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer  # noqa: PLC0415  (only ROUGE tasks need it)

        _SCORER = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    return _SCORER


# ---------------------------------------------------------------------------
# pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of pass@k from ``n`` samples of which ``c`` pass (Chen et al., 2021):
    ``1 - C(n - c, k) / C(n, k)``, computed as a product so large ``n`` does not overflow."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


# ---------------------------------------------------------------------------
# Running code


# The child limits itself before it runs the program: no Python code runs between fork and exec in this
# (multithreaded) process, as a ``preexec_fn`` would.
_BOOT = """import resource, sys
cpu, memory = int(sys.argv[2]), int(sys.argv[3])
for limit, value in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, memory), (resource.RLIMIT_FSIZE, 16 << 20),
                     (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(limit, (value, value))
program = sys.argv[1]
sys.argv = ["program"]
exec(compile(program, "<program>", "exec"), {"__name__": "__main__"})
"""


def run_python(program: str, timeout: float = 10.0, memory_mb: int = 1024) -> tuple[bool, str]:
    """Run ``program`` in a fresh, limited Python process: ``(passed, why)``; passed means it exited 0
    within ``timeout`` seconds. ``why``: ``"passed"``, ``"timed out"`` or the last line of its stderr."""
    with tempfile.TemporaryDirectory(prefix="eval-code-") as cwd:
        env = {"PATH": "/usr/bin:/bin", "HOME": cwd, "TMPDIR": cwd, "PYTHONHASHSEED": "0", "LANG": "C.UTF-8"}
        args = [sys.executable, "-I", "-c", _BOOT, program, str(max(1, int(timeout) + 1)), str(memory_mb << 20)]
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return False, "timed out"
        _kill_group(proc)  # anything it left running
    if proc.returncode == 0:
        return True, "passed"
    lines = err.decode("utf-8", "replace").strip().splitlines()
    return False, lines[-1][:300] if lines else f"exit status {proc.returncode}"


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """HumanEval's check program: the prompt and the completion, the tests, then ``check(entry_point)``. A
    completion that defines the entry point itself (a whole function from a code block) follows the prompt
    on a new line: the prompt's function, a docstring only, is valid and keeps its imports; the completion's
    definition replaces it."""
    defines = re.search(rf"^def\s+{re.escape(entry_point)}\s*\(", completion, re.MULTILINE)
    body = prompt + "\n" + completion if defines else prompt + completion
    return f"{body}\n\n{test}\n\ncheck({entry_point})\n"
