#!/usr/bin/env python3
# Regenerates features/README.md (the step vocabulary) from the step definitions and the feature files.
import re, glob, os
os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
params = {
 'string': r'"[^"]*"', 'int': r'-?\d+', 'float': r'-?[\d.]+', 'word': r'[^\s]+',
 'signal': r'(?:silence|white noise at amplitude [0-9.]+|[0-9.]+ Hz sine at amplitude [0-9.]+|[0-9.]+ Hz sine clipped at gain [0-9.]+)',
 'type': '[AB]', 'component': '(?:Algorithm A|Algorithm B|data writer|REST API)', 'duration': r'[0-9.]+ ?(?:ms|s)',
 'channel': '(?:audio stream|features_a fanout|features_b fanout)',
 'chunk_kind': '(?:silence then a tone|a tone that stops mid-chunk|a burst at the end|a tone of no whole number of periods|a tone over a DC offset|tones within a band)',
 'link': '(?:algorithm-a-1|algorithm-a-2|algorithm-b|writer-db|api-db|writer|api|publisher)',
 'fanout': '(?:features_a|features_b)',
 'malformation': '(?:not JSON|schema version 2|no sensor_id|a NaN sample|an infinite sample|sample rate 12345|an oversized payload|invalid base64|a partial frame|an invalid message_id|3 channels|a sample beyond full scale|a capture time an hour ahead|a capture time in 1970|a message_id property that differs from the body|the x-schema header of Feature A|content type text/plain|gzip content encoding|a sensor id of 600 multi-byte characters|11 seconds of audio)',
}
steps=[]
bodies={}
for f in sorted(glob.glob('steps/tests/cucumber/steps/*.rs')):
    domain=os.path.basename(f)[:-3]
    text=open(f).read()
    attrs=list(re.finditer(r'#\[(given|when|then)\(\s*(?:expr = )?"((?:[^"\\]|\\.)*)"\s*\)\]', text))
    for i,m in enumerate(attrs):
        expr=m.group(2).replace('\\"','"')
        steps.append((domain, m.group(1), expr))
        # The step's code: from its attribute to the next step attribute (stacked attributes share it).
        nxt=next((a.start() for a in attrs[i+1:] if text[m.end():a.start()].strip()), len(text))
        bodies[(domain,expr)]=text[m.end():nxt]

def semantics(kw, expr, body):
    """What a step compares and how long it waits, read from its code."""
    said=[]
    if 'NumSpec' in body or 'tolerance' in body.lower() or 'json_match' in body:
        said.append('numbers within the string\'s tolerance (`440 ± 2`, `± 0.5%`; a bare number is exact)')
    elif 'at least' in expr:
        said.append('at least: the bound is inclusive')
    elif 'at most' in expr or 'within {int} ms' in expr:
        said.append('at most: the bound is inclusive')
    elif kw=='then' and 'none_within(' not in body and 'never(' not in body:
        said.append('exact')
    if 'from {string} to {string}' in expr:
        said.append('`from` inclusive, `to` exclusive (contract)')
    if 'exactly_features(' in body:
        said.append('waits for N (up to QA_DEADLINE_MS), then QA_SETTLE_MS (400 ms) for one more')
    elif 'none_within(' in body or 'never(' in body:
        said.append('watches for the whole duration and fails at the first match')
    elif 'eventually' in expr or 'eventually(' in body:
        said.append('retries until it holds, up to QA_DEADLINE_MS (local 15 s, external 20 s)')
    elif 'wait_features(' in body or '.wait_for(' in body:
        said.append('waits for the message(s) up to QA_DEADLINE_MS (local 15 s, external 20 s), then checks them once')
    elif kw=='then':
        said.append('checked once, no retry')
    else:
        said.append('done once' + ('; publishes with broker confirms' if 'publish' in body else ''))
    return '; '.join(said)
lines=[l.strip() for f in sorted(glob.glob('features/*.feature')) for l in open(f)]
def to_re(expr):
    out=''; i=0
    while i < len(expr):
        c=expr[i]
        if c=='{':
            j=expr.index('}',i); out+='(?:'+params[expr[i+1:j]]+'|<[^>]+>|"<[^>]+>")'; i=j+1; continue
        if c=='(':
            j=expr.index(')',i); out+='(?:'+re.escape(expr[i+1:j])+')?'; i=j+1; continue
        m=re.match(r'(is)/(are)', expr[i:])
        if m and (i==0 or not expr[i-1].isalnum()):
            out+='(?:%s|%s)'%(m.group(1),m.group(2)); i+=len(m.group(0)); continue
        out+=re.escape(c); i+=1
    return '^(?:Given|When|Then|And|But) '+out+'$'
doc=['# Step vocabulary','','Every step sentence the suite understands, by domain, with an example from `features/`.',
'A test (`cargo test -p steps`) fails when a step in code is missing here; regenerate with `python3 scripts/gen-step-vocabulary.py`.',
'The semantics column is read from each step\'s code: what it compares (exact, a tolerance, an inclusive bound) and how long it waits. A step no definition matches makes the run print the nearest ones from this page.','',
'## Parameters','','| parameter | matches | example |','|---|---|---|',
'| `{string}` | text in double quotes | `"mic"` |','| `{int}` / `{float}` | numbers | `3`, `0.9` |','| `{word}` | one word | `dominant_frequency_hz` |',
'| `{signal}` | `silence`, `white noise at amplitude A`, `F Hz sine at amplitude A`, `F Hz sine clipped at gain G` | `440 Hz sine at amplitude 0.5` |',
'| `{type}` | feature type `A` or `B` | `A` |','| `{component}` | `Algorithm A`, `Algorithm B`, `data writer`, `REST API` | `Algorithm A` |',
'| `{duration}` | `N ms` or `N s` | `300 ms` |',
'| `{channel}` | an input channel for hostile input: `audio stream`, `features_a fanout`, `features_b fanout` | `audio stream` |',
'| `{fanout}` | a feature fanout of a chaos pipeline: `features_a`, `features_b` | `features_a` |',
'| `{malformation}` | `not JSON`, `schema version 2`, `no sensor_id`, `a NaN sample`, `an infinite sample`, `sample rate 12345`, `an oversized payload`, `invalid base64`, `a partial frame`, `an invalid message_id`, `3 channels`, `a sample beyond full scale`, `a capture time an hour ahead`, `a capture time in 1970`, `a message_id property that differs from the body`, `the x-schema header of Feature A`, `content type text/plain`, `gzip content encoding`, `a sensor id of 600 multi-byte characters`, `11 seconds of audio` | `a NaN sample` |','',
'Sensor names are local to a scenario: `"mic"` becomes `<run>-<scenario>-<id>.mic`, so scenarios never see each other.',
'Tolerances are strings: `"440 ± 2"`, `"440 +- 2"`, `"1000 ± 0.5%"`. Paths in `I call` steps may use `{sensor}` for a sensor id of the scenario.',
'Scenarios tagged `@needs-sut-control` start, kill or scale processes; the external profile skips them with a printed reason (run them against another implementation with `QA_SUT_COMMAND=<adapter>`, see `fixtures/contracts/adapter.md`). Scenarios that seed rows with `Given N stored Feature … rows` must be tagged `@writes-db` (a test checks it): the external profile skips them unless `QA_EXTERNAL_WRITES_DB=1`, and its database session is read-only.',
'Scenarios tagged `@fuzz` publish a seeded hostile corpus (`fixtures/fuzz/operators.toml`); the external profile skips them unless `QA_EXTERNAL_FUZZ=1`. `QA_FUZZ_SEED` (a number or `random`), `QA_FUZZ_INPUTS` and `QA_FUZZ_ONLY` override the seed, the count and the inputs; a failure prints the command that replays it.','']
missing=[]
for domain in sorted(set(d for d,_,_ in steps)):
    doc += ['## '+domain, '', '| keyword | step | example | semantics |', '|---|---|---|---|']
    for d,kw,expr in steps:
        if d!=domain: continue
        rx=re.compile(to_re(expr))
        ex=next((l for l in lines if rx.match(l)), None)
        if ex is None: missing.append(expr)
        doc.append('| %s | `%s` | %s | %s |'%(kw.capitalize(), expr.replace('|','\\|'), ('`'+ex.replace('|','\\|')+'`') if ex else '(no example yet)', semantics(kw, expr, bodies[(domain,expr)]).replace('|','\\|')))
    doc.append('')
# Example bodies of every API response, captured from a real `pipeline live` by
# scripts/capture-api-examples.sh (a subsection: the sections above are the step files' domains).
import json
try:
    examples=json.load(open('features/api-responses.json'))
except FileNotFoundError:
    examples=[]
if examples:
    section=['### API responses (real bodies, captured by `scripts/capture-api-examples.sh`)','',
             'What the `the response …` steps look at. History pages are cut to their first item; times are UTC.','']
    for e in examples:
        body=e['body']
        if isinstance(body, dict) and isinstance(body.get('items'), list):
            body=dict(body, items=body['items'][:1])
        section += ['`%s` → **%s**%s'%(e['request'], e['status'], ''.join(', `%s: %s`'%(k,v) for k,v in e.get('headers',{}).items())), '',
                    '```json', json.dumps(body, indent=2, ensure_ascii=False) if not isinstance(body,str) else body, '```', '']
    at=doc.index('## Parameters')
    # After the Parameters section's notes, before the first domain.
    first_domain=next(i for i,l in enumerate(doc) if l.startswith('## ') and i>at)
    doc[first_domain:first_domain]=section
open('features/README.md','w').write('\n'.join(doc))
print(len(steps),'steps;', 'unused:', missing)
