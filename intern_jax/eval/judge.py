"""Judge mode (OpenCompass's subjective evaluation): a judge model reads the answers a model generated.

- ``rate_answers`` (single-answer grading, MT-Bench's ``single-v1`` prompt): the judge explains and rates
  each answer 1-10 as ``Rating: [[N]]``; the dataset's metrics are the mean ``rating`` of the parsed
  verdicts (absent when none parsed) and ``unparsed``, the number of judgements with no rating or one
  outside 1-10 (left out of the mean, never guessed).
- ``compare_answers`` (pairwise, MT-Bench's ``pair-v2``): the judge sees a question and two answers and
  ends with ``[[A]]``, ``[[B]]`` or ``[[C]]`` (a tie). Every item is judged twice, the answers' positions
  swapped, so a judge that favours a position gains neither side anything. ``win_rate_vs_<base>``: 100 x
  the mean over parsed verdicts of 1 (win), 0.5 (tie), 0 (loss); ``unparsed`` counts the rest.

The judge is any ``EvalModel`` (the in-process decoder or an endpoint): it gets chat messages through
``generate_until`` (greedy), so its answers are cached and ``--reuse`` reads them back like any other.
"""

from __future__ import annotations

import re

from intern_jax.eval.config import DatasetConfig

SINGLE_TEMPLATE = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an "
    "AI assistant to the user question displayed below. Your evaluation should consider factors such as the "
    "helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response.{reference_note} "
    "Begin your evaluation by providing a short explanation. Be as objective as possible. After providing your "
    "explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: "
    "\"[[rating]]\", for example: \"Rating: [[5]]\".\n\n[Question]\n{question}\n\n{reference_block}"
    "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
)

PAIR_TEMPLATE = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
    "to the user question displayed below. You should choose the assistant that follows the user's instructions "
    "and answers the user's question better.{reference_note} Begin your evaluation by comparing the two "
    "responses and provide a short explanation. Avoid any position biases and ensure that the order in which "
    "the responses were presented does not influence your decision. Do not allow the length of the responses "
    "to influence your evaluation. Be as objective as possible. After providing your explanation, output your "
    "final verdict by strictly following this format: \"[[A]]\" if assistant A is better, \"[[B]]\" if "
    "assistant B is better, and \"[[C]]\" for a tie.\n\n[User Question]\n{question}\n\n{reference_block}"
    "[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
)

JUDGE_SYSTEM = "You are a helpful assistant."


def parse_rating(text: str, low: float = 1.0, high: float = 10.0) -> float | None:
    """The rating a judgement gives (``[[7]]``, ``Rating: [[7.5]]``; else ``Rating: 7``); None when there is
    none or it lies outside ``[low, high]``."""
    match = re.search(r"\[\[\s*(-?\d+(?:\.\d+)?)\s*\]\]", text) or \
        re.search(r"rating\s*[:=]?\s*\[?\s*(-?\d+(?:\.\d+)?)", text, flags=re.IGNORECASE)
    if match is None:
        return None
    value = float(match.group(1))
    return value if low <= value <= high else None


def parse_verdict(text: str) -> str | None:
    """``"A"``, ``"B"`` or ``"C"`` (tie) from a pairwise judgement's ``[[X]]``; None when there is none or
    the judgement names more than one."""
    found = set(re.findall(r"\[\[\s*([ABC])\s*\]\]", text))
    return found.pop() if len(found) == 1 else None


def _fill(template: str, record: dict, **answers) -> str:
    reference = str(record.get("reference") or "")
    note = " You will be given a reference answer." if reference else ""
    block = f"[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]\n\n" if reference else ""
    return template.format(question=record["prompt"], reference_note=note, reference_block=block, **answers)


def _ask(judge, cfg: DatasetConfig, prompts: list[str]) -> list[str]:
    messages = [[{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": p}] for p in prompts]
    return judge.generate_until([(m, [], cfg.judge.max_tokens) for m in messages])


def rate_answers(judge, cfg: DatasetConfig, records: list[dict]) -> dict[str, float]:
    """Single-answer grading of every record's ``output``; adds ``judgement`` and ``rating`` (None: unparsed)
    to each record and returns ``{"rating": mean of the parsed, "unparsed": count}``."""
    template = cfg.judge.template or SINGLE_TEMPLATE
    texts = _ask(judge, cfg, [_fill(template, r, answer=r["output"].strip()) for r in records])
    for record, text in zip(records, texts):
        record["judgement"], record["rating"] = text, parse_rating(text)
    rated = [r["rating"] for r in records if r["rating"] is not None]
    out = {"rating": round(sum(rated) / len(rated), 2)} if rated else {}  # none parsed: no number, not a guess
    return {**out, "unparsed": float(len(records) - len(rated))}


def compare_answers(judge, cfg: DatasetConfig, records: list[dict], base_records: list[dict],
                    base: str) -> dict[str, float]:
    """Pairwise comparison of ``records`` (one model's answers) with ``base_records`` (the base model's, same
    items in the same order), each item judged with the model's answer first and then second. Adds
    ``pairwise`` (the base's name, both judgements, both verdicts from the model's side: win / tie / loss /
    None) to each record; returns ``{"win_rate_vs_<base>": %, "unparsed": count}``."""
    if [(r["id"], r["rotation"]) for r in records] != [(r["id"], r["rotation"]) for r in base_records]:
        raise ValueError(f"pairwise judging of {cfg.name}: the two models' answers are for different items")
    template = cfg.judge.template or PAIR_TEMPLATE
    prompts = []
    for mine, theirs in zip(records, base_records):
        a, b = mine["output"].strip(), theirs["output"].strip()
        prompts += [_fill(template, mine, answer_a=a, answer_b=b), _fill(template, mine, answer_a=b, answer_b=a)]
    texts = _ask(judge, cfg, prompts)
    outcome = {("A", 0): "win", ("B", 0): "loss", ("A", 1): "loss", ("B", 1): "win", ("C", 0): "tie", ("C", 1): "tie"}
    points = {"win": 1.0, "tie": 0.5, "loss": 0.0}
    scored, unparsed = [], 0
    for n, record in enumerate(records):
        judgements = texts[2 * n: 2 * n + 2]
        verdicts = []
        for swapped, text in enumerate(judgements):
            verdict = parse_verdict(text)
            verdicts.append(None if verdict is None else outcome[(verdict, swapped)])
            if verdicts[-1] is None:
                unparsed += 1
            else:
                scored.append(points[verdicts[-1]])
        record["pairwise"] = {"base": base, "judgements": judgements, "verdicts": verdicts}
    out = {f"win_rate_vs_{base}": round(100.0 * sum(scored) / len(scored), 2)} if scored else {}
    return {**out, "unparsed": float(unparsed)}
