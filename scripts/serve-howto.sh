#!/usr/bin/env bash
# scripts/serve-howto.sh PORT - what `make run` prints before it starts heed serve.
port=${1:-8080}
venv=${HEED_VENV:-$HOME/.cache/heed/venv}
cat <<TXT

heed serve starts below on http://127.0.0.1:$port (Ctrl-C stops it). From another shell:

  curl -s http://127.0.0.1:$port/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "any", "messages": [{"role": "user", "content": "Reverse a string in C."}], "max_tokens": 200}'

  $venv/bin/python -c 'import openai; c = openai.OpenAI(base_url="http://127.0.0.1:$port/v1", api_key="none");
  print(c.chat.completions.create(model="any", messages=[{"role": "user", "content": "Hi"}]).choices[0].message.content)'

  $venv/bin/python -c 'import anthropic; c = anthropic.Anthropic(base_url="http://127.0.0.1:$port", api_key="none");
  print(c.messages.create(model="any", max_tokens=200, messages=[{"role": "user", "content": "Hi"}]).content[0].text)'

  ANTHROPIC_BASE_URL=http://127.0.0.1:$port ANTHROPIC_AUTH_TOKEN=none claude   # Claude Code, or any Anthropic-style agent
  OPENAI_BASE_URL=http://127.0.0.1:$port/v1 OPENAI_API_KEY=none <agent>        # OpenAI-compatible agents

  curl -s http://127.0.0.1:$port/metrics    # Prometheus: requests, tokens, cache hits, KV blocks, TTFT

TXT
