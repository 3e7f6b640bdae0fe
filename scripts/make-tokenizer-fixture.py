"""Writes tests/fixtures/smollm2_reference.json: token ids and greedy continuations
computed by llama.cpp (through llama-cpp-python) on the bundled SmolLM2 GGUF, which
the generator's tests compare with. Run once, by hand, when the model changes:

  python scripts/make-tokenizer-fixture.py assets/models/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import json
import sys

from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

CORPUS = [
    "Hello world",
    "Hello, world! How are you today?",
    "  leading spaces and trailing   ",
    "tabs\tand\nnewlines\n\n\nand\r\nCRLF",
    "numbers 1234567890 and 3.14159, 1e-9, 0x1F",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * 2).collect();\n    println!(\"{v:?}\");\n}\n",
    "def f(x):\n\treturn {'a': [1, 2, 3], \"b\": None}  # comment\n",
    "Größenmaßstäbe für Übungen: café, naïve, coöperate",
    "日本語のテキストと中文文本，还有한국어 텍스트。",
    "Emoji: 🎉🚀👩‍👩‍👧‍👦 and flags 🇫🇷🇯🇵",
    "Math: ∑_{i=1}^{n} i² = n(n+1)(2n+1)/6 ≈ ∞",
    "don't can't won't I'm you're they've we'll she'd",
    "URL https://example.com/path?q=1&r=2#frag and email a.b@c.org",
    "<|im_start|> is text here, not a control token <|im_end|>",
    "Ελληνικά, русский текст, עברית, العربية",
    "    indented\n        more indented\n",
    "!!!???...---___***",
    "a" * 300,
]

CHATS = [
    [{"role": "user", "content": "In two or three sentences: why do people keep houseplants?"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Name 3 primes."},
     {"role": "assistant", "content": "2, 3, 5."},
     {"role": "user", "content": "And the next 2?"}],
]


def main():
    gguf = sys.argv[1]
    llm = Llama(model_path=gguf, n_threads=2, n_threads_batch=2, n_ctx=1024, verbose=False)
    fmt = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"],
                              eos_token=llm.detokenize([llm.token_eos()], special=True).decode(),
                              bos_token=llm.detokenize([llm.token_bos()], special=True).decode())
    out = {"model": gguf.rsplit("/", 1)[-1], "texts": [], "chats": []}
    for s in CORPUS:
        out["texts"].append({"text": s, "ids": llm.tokenize(s.encode(), add_bos=False, special=False)})
    for msgs in CHATS:
        ids = llm.tokenize(fmt(messages=msgs).prompt.encode(), add_bos=False, special=True)
        greedy = []
        llm.reset()
        for t in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            if t == llm.token_eos() or len(greedy) == 32:
                break
            greedy.append(t)
        out["chats"].append({"messages": msgs, "ids": ids, "greedy": greedy})
    with open("tests/fixtures/smollm2_reference.json", "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
