"""A dataset config turned into requests and scores: reading items, prompts with few-shot examples,
the three inferencers (``ppl``, ``ll``, ``gen``), post-processors, evaluators and CircularEval.

Everything here talks to the model only through ``EvalModel``'s requests, so the same task runs
over the in-process decoder or any other implementation of that interface. Scores are percentages
(0-100), as OpenCompass reports them. ``acc_norm`` divides each option's log-likelihood by the UTF-8
byte length of its continuation (lm-eval's normalisation; the same as its character count for ASCII).
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import re
import string
from pathlib import Path

import numpy as np

from intern_jax.eval import metrics as scores
from intern_jax.eval.config import DatasetConfig, FewShotConfig, PostprocessConfig, ReaderConfig

LETTERS = string.ascii_uppercase


# ---------------------------------------------------------------------------
# Reading


def _rows(reader: ReaderConfig):
    """``(where, row dict)`` of a JSONL, CSV or Parquet file; ``where`` is ``path:line`` (``path:row N``
    for Parquet, rows counted from 1)."""
    if reader.generate == "needle":
        from intern_jax.eval.needle import needle_rows  # noqa: PLC0415

        for n, row in enumerate(needle_rows(**reader.generate_args), start=1):
            yield f"needle:item {n}", row
        return
    path = Path(reader.path)
    if not path.is_file():
        raise ValueError(f"dataset file {path} does not exist")
    if reader.format == "csv":
        with path.open(newline="", encoding="utf-8") as f:
            for lineno, row in enumerate(csv.DictReader(f), start=2):
                yield f"{path}:{lineno}", row
        return
    if reader.format == "parquet":
        import pyarrow.parquet as pq  # noqa: PLC0415  (only Parquet datasets need it)

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a file that is not Parquet
            raise ValueError(f"dataset file {path} is not a readable Parquet file ({e})") from None
        for n, row in enumerate(table.to_pylist(), start=1):
            yield f"{path}:row {n}", row
        return
    opener = gzip.open if path.suffix == ".gz" else open  # HumanEval ships as .jsonl.gz
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield f"{path}:{lineno}", row


def read_items(reader: ReaderConfig, multiple_choice: bool) -> list[dict]:
    """Items as dicts of the prompt's fields, plus ``options`` (multiple choice: a list of strings)
    and ``reference`` (an option index, or the answer text). A missing field names itself and the line."""
    items = []
    for where, row in _rows(reader):

        def column(name, row=row, where=where):
            if name not in row or row[name] is None:
                raise ValueError(f"{where}: missing field {name!r} (fields present: {', '.join(sorted(row))})")
            return row[name]

        item = dict(row)
        for name, col in reader.fields.items():
            item[name] = column(col)
        answer = column(reader.answer)
        if multiple_choice:
            if isinstance(reader.options, str):
                options = column(reader.options)
                if not isinstance(options, list) or len(options) < 2:
                    raise ValueError(f"{where}: field {reader.options!r} must be a list of at least 2 options")
            else:
                options = [column(c) for c in reader.options]
            options = [str(o) for o in options]
            item["options"] = options
            item["reference"] = _option_index(answer, options, where)
        else:
            item["reference"] = str(answer)
        items.append(item)
    if not items:
        raise ValueError(f"dataset file {reader.path} has no items")
    return items


def _option_index(answer, options: list[str], where: str) -> int:
    """The answer as an option index: an int, a letter (``"B"``) or the option's text."""
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(options):
        return answer
    text = str(answer).strip()
    if text.isdigit() and int(text) < len(options):
        return int(text)
    if len(text) == 1 and text.upper() in LETTERS[: len(options)]:
        return LETTERS.index(text.upper())
    if text in options:
        return options.index(text)
    raise ValueError(f"{where}: answer {answer!r} is neither an index, a letter nor the text of one of the "
                     f"{len(options)} options")


# ---------------------------------------------------------------------------
# Prompts


class _Fields(dict):
    def __missing__(self, key):
        raise ValueError(f"prompt template asks for field {{{key}}}, which the item does not have "
                         f"(fields: {', '.join(sorted(self))})")


def fields_of(item: dict) -> _Fields:
    fields = _Fields(item)
    options = item.get("options")
    if options:
        fields["options"] = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
        fields.update({LETTERS[i]: o for i, o in enumerate(options)})
    return fields


def question(cfg: DatasetConfig, item: dict) -> str:
    return cfg.prompt.template.format_map(fields_of(item))


def continuation(cfg: DatasetConfig, item: dict, option: int | None) -> str:
    """The continuation of the question: option ``option``'s, or (``None``) the reference answer's."""
    fields = fields_of(item)
    if item.get("options"):
        index = item["reference"] if option is None else option
        fields.update(option=item["options"][index], label=LETTERS[index], answer=item["options"][index])
    else:
        fields.update(answer=item["reference"])
    return cfg.prompt.continuation.format_map(fields)


def fewshot_examples(fewshot: FewShotConfig, pool: list[dict], index: int, same_pool: bool) -> list[dict]:
    """The examples shown before item ``index``: none, fixed ones, or ``k`` drawn with the seed (never the item)."""
    if fewshot.mode == "bm25":
        raise ValueError("fewshot.mode='bm25' picks examples for all items at once: use fewshot_plan")
    if fewshot.mode == "zero" or (fewshot.mode == "random" and fewshot.k == 0):
        return []
    if fewshot.mode == "fixed":
        indices = fewshot.indices or tuple(range(fewshot.k))
        bad = [i for i in indices if not 0 <= i < len(pool)]
        if bad:
            raise ValueError(f"fewshot.indices {bad} are outside the {len(pool)} few-shot items")
        return [pool[i] for i in indices if not (same_pool and i == index)]
    candidates = [i for i in range(len(pool)) if not (same_pool and i == index)]
    rng = np.random.default_rng([fewshot.seed, index])
    picked = rng.choice(len(candidates), size=min(fewshot.k, len(candidates)), replace=False)
    return [pool[candidates[i]] for i in picked]


def bm25_neighbours(queries: list[str], documents: list[str], k: int, exclude_self: bool) -> list[list[int]]:
    """For each query, the indices of the ``k`` documents nearest by BM25 (``bm25s``, Lucene scoring, words
    ``\\w+`` lower-cased), best first, ties to the earlier document; ``exclude_self``: query ``i`` never
    gets document ``i``."""
    import bm25s  # noqa: PLC0415  (only BM25 few-shot needs it)

    def words(text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())

    retriever = bm25s.BM25()
    retriever.index([words(d) for d in documents], show_progress=False)
    out = []
    for i, query in enumerate(queries):
        tokens = words(query)
        scores = retriever.get_scores(tokens) if tokens else np.zeros(len(documents))
        order = sorted(range(len(documents)), key=lambda j: (-float(scores[j]), j))
        out.append([j for j in order if not (exclude_self and j == i)][:k])
    return out


def fewshot_plan(cfg: DatasetConfig, items: list[dict], pool: list[dict], same_pool: bool) -> list[list[dict]]:
    """The few-shot examples shown before each item (``fewshot_examples``; BM25 over the filled questions)."""
    if cfg.fewshot.mode != "bm25" or cfg.fewshot.k == 0:
        return [fewshot_examples(cfg.fewshot, pool, n, same_pool) for n in range(len(items))]
    near = bm25_neighbours([question(cfg, it) for it in items], [question(cfg, ex) for ex in pool],
                           cfg.fewshot.k, exclude_self=same_pool)
    return [[pool[j] for j in row] for row in near]


def context_for(cfg: DatasetConfig, item: dict, examples: list[dict]) -> str:
    sep = cfg.prompt.fewshot_separator
    shots = [question(cfg, ex) + continuation(cfg, ex, None) for ex in examples]
    return sep.join([*shots, question(cfg, item)])


def rotations(item: dict) -> list[dict]:
    """CircularEval: the item with its options rotated by 0, 1, ... n-1 places (the answer follows)."""
    options, n = item["options"], len(item["options"])
    return [{**item, "options": options[r:] + options[:r], "reference": (item["reference"] - r) % n, "rotation": r}
            for r in range(n)]


# ---------------------------------------------------------------------------
# Post-processing and evaluation


def postprocess(cfg: PostprocessConfig, text: str, num_options: int = 26) -> str:
    text = text or ""
    if cfg.kind == "none":
        return text
    if cfg.kind == "strip":
        return text.strip()
    if cfg.kind == "option_letter":
        return option_letter(text, num_options)
    if cfg.kind == "last_number":
        return last_number(text)
    if cfg.kind == "code_block":
        return scores.code_block(text)
    match = re.search(cfg.pattern, text, flags=re.DOTALL)
    if match is None:
        return ""
    return (match.group(1) if match.groups() else match.group(0)).strip()


def option_letter(text: str, num_options: int = 26) -> str:
    """The option letter a reply names: ``B``, ``(B)``, ``B.``, ``answer is B``; first such letter wins."""
    letters = LETTERS[:num_options]
    patterns = (
        rf"^\s*\(?([{letters}])\b",  # starts with the letter
        rf"answer\s*(?:is|:)?\s*\(?([{letters}])\b",
        rf"\(([{letters}])\)",
        rf"\b([{letters}])[.):]",
        rf"\b([{letters}])\b",
    )
    for pattern in patterns:
        match = re.search(pattern, text, flags=re.IGNORECASE if "answer" in pattern else 0)
        if match:
            return match.group(1).upper()
    return ""


def last_number(text: str) -> str:
    """The last number in the text (``1,234.5`` -> ``1234.5``; a trailing full stop is not a decimal point)."""
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    return numbers[-1].replace(",", "") if numbers else ""


def numeric_equal(prediction: str, reference: str, tolerance: float) -> bool:
    try:
        a, b = float(prediction), float(str(reference).replace(",", ""))
    except ValueError:
        return False
    return math.isfinite(a) and abs(a - b) <= tolerance * max(1.0, abs(b))


def is_correct(cfg: DatasetConfig, prediction: str, item: dict) -> bool:
    """A generation task's verdict on one post-processed prediction."""
    if item.get("options"):
        return prediction == LETTERS[item["reference"]]
    metric = cfg.evaluator.metric
    if metric == "numeric_match":
        return numeric_equal(prediction, item["reference"], cfg.evaluator.tolerance)
    return prediction.strip().lower() == str(item["reference"]).strip().lower()


# ---------------------------------------------------------------------------
# Inference over one dataset


def evaluate(model, cfg: DatasetConfig, items: list[dict], fewshot_pool: list[dict] | None = None,
             same_pool: bool = True, partition: tuple[int, int] | None = None) -> tuple[dict[str, float], list[dict]]:
    """Score ``items`` with ``model``: ``(metrics, one prediction record per item and rotation)``.

    Few-shot examples come from ``fewshot_pool`` (default: ``items``); ``same_pool``: item ``i`` of
    ``items`` is item ``i`` of the pool, and is never its own example. ``partition=(w, n)``: only the
    items whose number is ``w`` modulo ``n`` (prompts exactly as in the whole run); metrics are then
    left to ``metrics_of`` over the merged records, and ``{}`` is returned for them."""
    pool = items if fewshot_pool is None else fewshot_pool
    units = []  # (item number, rotated item, context)
    for n, (item, examples) in enumerate(zip(items, fewshot_plan(cfg, items, pool, same_pool))):
        if partition is not None and n % partition[1] != partition[0]:
            continue
        variants = rotations(item) if cfg.infer.circular else [{**item, "rotation": 0}]
        for variant in variants:
            units.append((n, variant, context_for(cfg, variant, examples)))
    if not units:
        return {}, []
    mode = cfg.infer.mode
    if mode == "perplexity":
        records = _infer_perplexity(model, units)
    elif mode == "ll":
        records = _infer_ll(model, cfg, units)
    elif mode == "ppl":
        records = _infer_ppl(model, cfg, units)
    else:
        records = _infer_gen(model, cfg, units)
    return ({} if partition is not None else metrics_of(records, cfg)), records


def _infer_ll(model, cfg, units) -> list[dict]:
    requests, spans = [], []
    for _, item, context in units:
        conts = [continuation(cfg, item, i) for i in range(len(item["options"]))]
        spans.append((len(requests), conts))
        requests += [(context, c) for c in conts]
    scores = model.loglikelihood(requests)
    records = []
    for (n, item, context), (lo, conts) in zip(units, spans):
        ll = np.array([scores[lo + i][0] for i in range(len(conts))])
        norm = ll / np.array([max(1, len(c.encode("utf-8"))) for c in conts])
        pred, pred_norm = int(np.argmax(ll)), int(np.argmax(norm))
        records.append({"id": n, "rotation": item["rotation"], "prompt": context, "continuations": conts,
                        "loglikelihoods": ll.tolist(), "prediction": pred, "prediction_norm": pred_norm,
                        "reference": item["reference"], "correct": pred == item["reference"],
                        "correct_norm": pred_norm == item["reference"]})
    return records


def _infer_perplexity(model, units) -> list[dict]:
    texts = [context for _, _, context in units]
    sums = model.loglikelihood_rolling(texts)
    return [{"id": n, "rotation": 0, "prompt": text, "loglikelihood": ll, "tokens": model.token_count(text),
             "bytes": len(text.encode("utf-8"))} for (n, _, _), text, ll in zip(units, texts, sums)]


def _infer_ppl(model, cfg, units) -> list[dict]:
    texts, spans = [], []
    for _, item, context in units:
        filled = [context + continuation(cfg, item, i) for i in range(len(item["options"]))]
        spans.append((len(texts), filled))
        texts += filled
    sums = model.loglikelihood_rolling(texts)
    records = []
    for (n, item, context), (lo, filled) in zip(units, spans):
        ppl = [math.exp(-sums[lo + i] / max(1, model.token_count(t))) for i, t in enumerate(filled)]
        pred = int(np.argmin(ppl))
        records.append({"id": n, "rotation": item["rotation"], "prompt": context, "perplexities": ppl,
                        "prediction": pred, "reference": item["reference"], "correct": pred == item["reference"]})
    return records


def _infer_gen(model, cfg, units) -> list[dict]:
    requests = []
    for n, item, context in units:
        prompt = context
        if cfg.prompt.chat:
            prompt = [{"role": "user", "content": context}]
            if cfg.prompt.system:
                prompt = [{"role": "system", "content": cfg.prompt.system}, *prompt]
        request = (prompt, list(cfg.infer.stop), cfg.infer.max_tokens)
        if not cfg.infer.sampled:
            requests.append(request)  # greedy: the plain request (and its cache key) as always
            continue
        seeds = [sample_seed(cfg.infer.seed, n, j, item["rotation"]) for j in range(cfg.infer.num_samples)]
        requests += [(*request, {"temperature": cfg.infer.temperature, "seed": s}) for s in seeds]
    texts = model.generate_until(requests)
    samples = cfg.infer.num_samples if cfg.infer.sampled else 1
    records = []
    for u, (n, item, context) in enumerate(units):
        outputs = texts[u * samples: (u + 1) * samples]
        preds = [postprocess(cfg.postprocess, t, len(item.get("options") or LETTERS)) for t in outputs]
        reference = LETTERS[item["reference"]] if item.get("options") else item["reference"]
        records.append({"id": n, "rotation": item["rotation"], "prompt": context, "output": outputs[0],
                        "prediction": preds[0], "reference": reference})
        if samples > 1:
            records[-1]["samples"] = [{"output": t, "prediction": p} for t, p in zip(outputs, preds)]
    metric = cfg.evaluator.metric
    if metric == "pass_at_k" and not units[0][1].get("options"):
        _run_programs(cfg, [u[1] for u in units], records)
        return records
    for (_, item, _), record in zip(units, records):
        pred = record["prediction"]
        if item.get("options") or metric not in ("f1", "rouge", "pass_at_k"):
            record["correct"] = is_correct(cfg, pred, item)
        elif metric == "f1":
            record["score"] = scores.token_f1(pred, item["reference"])
            record["correct"] = record["score"] == 1.0
        elif metric == "rouge":
            record["scores"] = scores.rouge_scores(pred, item["reference"])
            record["correct"] = record["scores"]["rougeL"] == 1.0
    return records


def sample_seed(seed: int, item: int, sample: int, rotation: int = 0) -> int:
    """The seed of sample ``sample`` of item ``item`` (and rotation): the same in every run, partition and worker."""
    return int(np.random.SeedSequence([seed, item, rotation, sample]).generate_state(1)[0] % 2**31)


def _run_programs(cfg: DatasetConfig, items: list[dict], records: list[dict]) -> None:
    """pass_at_k: each prediction's HumanEval program (every sample's, when sampled), run in limited processes
    (a few at a time). A record gets ``correct`` / ``execution`` (its first completion's) and, sampled,
    ``num_correct`` and each sample's verdict."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    programs, owners = [], []
    for item in items:
        for field in ("prompt", "entry_point"):
            if field not in item:
                raise ValueError(f"evaluator.metric='pass_at_k' needs the item field {field!r} (HumanEval's "
                                 f"layout: prompt, test, entry_point); fields: {', '.join(sorted(item))}")
    for item, record in zip(items, records):
        for sample in record.get("samples") or [record]:
            programs.append(scores.humaneval_program(item["prompt"], sample["prediction"], item["reference"],
                                                     item["entry_point"]))
            owners.append(sample)
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        results = list(pool.map(lambda p: scores.run_python(p, cfg.evaluator.timeout), programs))
    for sample, (passed, why) in zip(owners, results):
        sample["correct"], sample["execution"] = passed, why
    for record in records:
        if "samples" in record:
            record["correct"], record["execution"] = record["samples"][0]["correct"], record["samples"][0]["execution"]
            record["num_correct"] = sum(s["correct"] for s in record["samples"])


def _pass_at(record: dict, k: int) -> float:
    """pass@k of one item: the unbiased estimator over its samples, or (one completion) whether it passed."""
    if "samples" not in record:
        return float(record["correct"])
    return scores.pass_at_k(len(record["samples"]), record["num_correct"], k)


def metrics_of(records: list[dict], cfg: DatasetConfig) -> dict[str, float]:
    """Percentages: ``acc`` (or the evaluator's metric), ``acc_norm`` for ``ll``, and with CircularEval
    ``circular_acc`` (an item counts only if every rotation is right) beside plain ``acc`` (rotation 0).
    ``f1``: the mean token F1; ``bleu``: corpus BLEU; ``rouge``: ``rouge1``, ``rouge2``, ``rougeL`` means;
    ``pass_at_k``: ``pass@k`` for each of ``evaluator.k`` (the mean over items); ``perplexity`` mode: ``ppl``
    (exp of the mean negative log-likelihood per token over the whole set) and ``bits_per_byte``."""
    metric = cfg.evaluator.metric
    plain = [r for r in records if r["rotation"] == 0]
    if cfg.infer.mode == "perplexity":
        total = -math.fsum(r["loglikelihood"] for r in plain)
        return {"ppl": round(math.exp(total / max(1, sum(r["tokens"] for r in plain))), 4),
                "bits_per_byte": round(total / math.log(2) / max(1, sum(r["bytes"] for r in plain)), 4)}
    if not cfg.multiple_choice and metric in ("f1", "bleu", "rouge", "pass_at_k"):
        if metric == "f1":
            return {"f1": round(100.0 * float(np.mean([r["score"] for r in plain])), 2)}
        if metric == "bleu":
            return {"bleu": round(scores.corpus_bleu([r["prediction"] for r in plain],
                                                     [str(r["reference"]) for r in plain]), 2)}
        if metric == "rouge":
            return {k: round(100.0 * float(np.mean([r["scores"][k] for r in plain])), 2)
                    for k in ("rouge1", "rouge2", "rougeL")}
        return {f"pass@{k}": round(100.0 * float(np.mean([_pass_at(r, k) for r in plain])), 2)
                for k in cfg.evaluator.k}
    name = "acc" if cfg.multiple_choice else metric
    keys = [("correct", name)] + ([("correct_norm", "acc_norm")] if cfg.infer.mode == "ll" else [])
    out = {metric: round(100.0 * sum(r[key] for r in plain) / len(plain), 2) for key, metric in keys}
    for key, metric in keys:
        if cfg.infer.circular:
            by_item: dict[int, bool] = {}
            for r in records:
                by_item[r["id"]] = by_item.get(r["id"], True) and bool(r[key])
            out[f"circular_{metric}"] = round(100.0 * sum(by_item.values()) / len(by_item), 2)
    return out
