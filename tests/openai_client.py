"""Drive `encore serve` with the official `openai` Python client (run by
crates/cli/tests/serve.rs against a server it started on 127.0.0.1).

usage: python tests/openai_client.py BASE_URL API_KEY MODEL

Each check prints `ok: ...`; the first failure raises (non-zero exit). Greedy requests
(temperature 0) make streamed and non-streamed answers comparable token for token.
"""

import json
import sys
import urllib.request

import openai


def main() -> None:
    base_url, api_key, model = sys.argv[1], sys.argv[2], sys.argv[3]
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=60)

    ids = [m.id for m in client.models.list().data]
    assert ids == [model], ids
    print("ok: models.list")

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
    text = chat.choices[0].message.content
    assert text, chat
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason in ("stop", "length"), chat
    assert 0 < chat.usage.completion_tokens <= 8 and chat.usage.prompt_tokens > 0, chat.usage
    print(f"ok: chat {text!r}")

    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text, (streamed, text)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [chat.choices[0].finish_reason], finishes
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens, chunks[-1]
    print("ok: chat stream == chat")

    prompt = "The capital of France is"
    comp = client.completions.create(model=model, prompt=prompt, max_tokens=6, temperature=0)
    ctext = comp.choices[0].text
    assert len(ctext) >= 5 and comp.usage.completion_tokens == 6, comp
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model=model, prompt=prompt, max_tokens=6, temperature=0, stream=True)
        if c.choices
    )
    assert streamed == ctext, (streamed, ctext)
    print(f"ok: completion {ctext!r}, stream == completion")

    stop = ctext[3:5]
    cut = client.completions.create(model=model, prompt=prompt, max_tokens=6, temperature=0, stop=[stop])
    assert cut.choices[0].text == ctext[: ctext.find(stop)], (cut.choices[0].text, ctext, stop)
    assert cut.choices[0].finish_reason == "stop", cut
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=model, prompt=prompt, max_tokens=6, temperature=0, stop=stop, stream=True
        )
        if c.choices
    )
    assert streamed == cut.choices[0].text, (streamed, cut.choices[0].text)
    print(f"ok: stop {stop!r} cuts the text, streamed or not")

    # vLLM's /tokenize (beside /v1): {"count", "max_model_len", "tokens"}
    root = base_url.removesuffix("/v1")

    def post(path: str, body: dict) -> dict:
        headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        req = urllib.request.Request(f"{root}{path}", data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)

    tokens = post("/tokenize", {"prompt": prompt})
    ids = tokens["tokens"]
    assert tokens["count"] == len(ids) > 0, tokens
    back = post("/detokenize", {"tokens": ids})
    assert back["prompt"].endswith(prompt), back
    by_ids = client.completions.create(model=model, prompt=ids, max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == ctext and by_ids.usage.prompt_tokens == len(ids), by_ids
    print("ok: a token-id prompt == its text")

    lp = client.chat.completions.create(
        model=model, messages=messages, max_tokens=3, temperature=0, logprobs=True, top_logprobs=2
    )
    content = lp.choices[0].logprobs.content
    assert len(content) == lp.usage.completion_tokens, lp
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content), content
    assert content[0].token == content[0].top_logprobs[0].token, content[0]
    clp = client.completions.create(model=model, prompt=prompt, max_tokens=3, temperature=0, logprobs=2)
    assert len(clp.choices[0].logprobs.tokens) == 3 and len(clp.choices[0].logprobs.top_logprobs[0]) == 2, clp
    print("ok: logprobs (chat and completions)")

    sampled = [
        client.completions.create(model=model, prompt=prompt, max_tokens=4, temperature=0.8, seed=42).choices[0].text
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1], sampled
    print("ok: the same seed samples the same text")

    for kwargs, field in [({"temperature": -1}, "temperature"), ({"top_p": 7}, "top_p"), ({"n": 2}, "n")]:
        try:
            client.completions.create(model=model, prompt=prompt, max_tokens=2, **kwargs)
            raise AssertionError(f"{kwargs} was accepted")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and field in str(e), e
    try:
        client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=2)
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as e:
        assert e.status_code == 404 and "no-such-model" in str(e), e
    try:
        openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError as e:
        assert e.status_code == 401, e
    print("ok: 400 naming the field, 404 unknown model, 401 wrong key")


if __name__ == "__main__":
    main()
