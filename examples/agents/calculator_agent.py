"""A calculator agent written against the plain ``openai`` client (no rlvr imports): train it with
``rlvr train configs/agent_r1zero.yaml``, or point it at any OpenAI-compatible server.

The policy (the tiny tool-using base of configs/tools_pretrain.yaml has no chat template, so this
agent speaks the completions API) writes its reasoning and may call the calculator with a tagged
expression, ``<python>print(12+7)</python>``. The agent stops the model at the closing tag,
evaluates the arithmetic itself (numbers, + - * / and parentheses only: nothing is executed),
sends the conversation back with ``<output>\\n19\\n</output>\\n`` appended, and lets the model go on.
A turn without a call is the answer: the agent returns None, and the run's rubric scores that final
message against the row (``arith`` reads its ``<answer>`` tags).

The agent sends back exactly the text it was given plus the tool's output, so the server continues
from the tokens the model sampled and the whole session trains as one exact sequence (docs/agents.md).
"""

from __future__ import annotations

import ast
import operator
import re

MODEL = "policy"  # the name rlvr's server gives the policy (client.models.list() says so too)
CALL = re.compile(r"<python>\s*(?:print\()?(.*?)\)?\s*$", re.S)
MAX_CALLS = 1  # the tools base was pretrained on one call per problem
OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
       ast.USub: operator.neg, ast.UAdd: operator.pos}


def calculate(expression: str) -> str:
    """The value of an arithmetic expression, or an error line the model can read."""
    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            return OPS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in OPS:
            return OPS[type(node.op)](value(node.operand))
        raise ValueError("only numbers and + - * / ( )")

    try:
        result = value(ast.parse(expression.strip(), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError) as exc:
        return f"error: {exc}"
    return str(int(result)) if float(result).is_integer() else str(result)


def rollout(client, row):
    """One episode on ``row`` (its rendered prompt is ``row["prompt_text"]``); None: the rubric scores it."""
    text = row["prompt_text"]
    for _ in range(MAX_CALLS + 1):
        reply = client.completions.create(model=MODEL, prompt=text, max_tokens=48, stop=["</python>"])
        turn = reply.choices[0].text
        text += turn
        call = CALL.search(turn) if "<python>" in turn else None
        if call is None or reply.choices[0].finish_reason != "stop":
            break  # the answer (or a turn cut at max_tokens): the episode is over
        text += f"</python>\n<output>\n{calculate(call.group(1))}\n</output>\n"
    return None


if __name__ == "__main__":  # against `rlvr serve artifacts/tools-base`: OPENAI_BASE_URL, OPENAI_API_KEY, a prompt
    import sys

    import openai

    client = openai.OpenAI()
    MODEL = client.models.list().data[0].id  # noqa: N816 (rlvr serve names the model after its directory)
    print(rollout(client, {"prompt_text": sys.argv[1]}))
