"""The kit's chat templates: Qwen-VL's ChatML, and Qwen3.5's with its <think> block.

Every tag trims its whitespace and newlines are written as string literals: nothing depends on
how Jinja treats the line breaks of this source. The assistant turn (content + <|im_end|>) sits
inside {% generation %} for return_assistant_tokens_mask.
"""

from __future__ import annotations

_RENDER = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- for item in content -%}"
    "{%- if item['type'] == 'image' or 'image' in item or 'image_url' in item -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'video' or 'video' in item -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in item -%}{{- item['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)

# ChatML like Qwen's, without a default system prompt, so that a conversation renders the same
# way at train and eval time.
CHAT_TEMPLATE = (
    _RENDER
    + "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- render(message['content']) + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- render(message['content']) + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# What Qwen3.5's own template (4B and larger) does that the ChatML above does not, restated
# from public copies of it: contents are trimmed; an assistant turn after the last user turn is
# written `<think>\n{reasoning}\n</think>\n\n{content}` (an empty think block without
# reasoning), earlier ones without; the generation prompt opens a think block
# (`<think>\n`, the model thinks) unless `enable_thinking` is false, then it is the empty
# `<think>\n\n</think>\n\n`. (0.8B and 2B flip the default: thinking only when
# enable_thinking is true.) No default system prompt, the same image placeholder.
QWEN35_CHAT_TEMPLATE = (
    _RENDER
    + "{%- set ns = namespace(last_query=-1) -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{%- set ns.last_query = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- for message in messages -%}"
    "{%- set content = render(message['content'])|trim -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- set reasoning = '' -%}"
    "{%- if message['reasoning_content'] is string -%}"
    "{%- set reasoning = message['reasoning_content'] -%}"
    "{%- elif '</think>' in content -%}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1] -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}"
    "{%- endif -%}"
    "{%- if loop.index0 > ns.last_query -%}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning|trim + '\\n</think>\\n\\n' -}}"
    "{%- else -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    "{%- generation -%}{{- content + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- else -%}{{- '<think>\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)
