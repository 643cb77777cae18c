#!/usr/bin/env python3
"""Compares the device code of two object files, kernel by kernel: resource usage (registers, stack,
shared, local), the SASS instruction count, and the opcode histogram difference. The evidence that a
refactor of a kernel left its generated code alone (needs cuobjdump and nvdisasm on PATH: the CUDA
toolkit, or PyPI's nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm).
  python3 dev/tools/sasscmp.py base.o new.o
  SASS_RENAME=old=new,...   maps mangled-name fragments of moved kernels (e.g. a namespace)
Objects: build-*/CMakeFiles/minillm.dir/src/cuda/**/*.cu.o of two builds."""
import collections
import os
import re
import subprocess
import sys

RENAMES = [tuple(x.split('=', 1)) for x in os.environ.get('SASS_RENAME', '').split(',') if '=' in x]

def key(name):
    # anonymous namespaces carry a hash of the file path; SASS_RENAME=old=new maps moved namespaces
    name = re.sub(r'_GLOBAL__N__[0-9a-f]+_', '_GLOBAL__N__', name)
    for a, b in RENAMES:
        name = name.replace(a, b)
    return name

def res_usage(obj):
    out = subprocess.run(['cuobjdump', '-res-usage', obj], capture_output=True, text=True).stdout
    res, fn = {}, None
    for line in out.splitlines():
        m = re.match(r'\s*Function (\S+):', line)
        if m:
            fn = key(m.group(1))
        elif fn and 'REG:' in line:
            res[fn] = dict(re.findall(r'(\w+(?:\[\d\])?):(\d+)', line))
            fn = None
    return res

def sass(obj):
    out = subprocess.run(['cuobjdump', '-sass', obj], capture_output=True, text=True).stdout
    funcs, fn = {}, None
    for line in out.splitlines():
        m = re.match(r'\s*Function : (\S+)', line)
        if m:
            fn = key(m.group(1)); funcs[fn] = []
            continue
        m = re.match(r'\s*/\*[0-9a-f]{4,}\*/\s+(.*?);', line)
        if fn and m:
            funcs[fn].append(m.group(1).strip())
    return funcs

def opcode(ins):
    ins = re.sub(r'^@!?U?P\w+\s+', '', ins)
    return ins.split()[0]

def short(name):
    try:
        d = subprocess.run(['c++filt', name], capture_output=True, text=True).stdout.strip()
    except OSError:
        d = name
    d = d.replace('minillm::cuda::', '').replace('__nv_bfloat16', 'bf16').replace('__half', 'f16')
    if d.endswith(')'):
        depth = 0
        for i in range(len(d) - 1, -1, -1):
            depth += d[i] == ')'
            depth -= d[i] == '('
            if depth == 0:
                return d[:i]
    return d

def main():
    base, new = sys.argv[1], sys.argv[2]
    rb, rn = res_usage(base), res_usage(new)
    sb, sn = sass(base), sass(new)
    same = True
    for fn in sorted(set(sb) | set(sn)):
        if fn not in sb or fn not in sn:
            print(f'only in {"base" if fn in sb else "new"}: {short(fn)}'); same = False
            continue
        a, b = sb[fn], sn[fn]
        ra, rn_ = rb.get(fn, {}), rn.get(fn, {})
        ha = collections.Counter(map(opcode, a)); hb = collections.Counter(map(opcode, b))
        diff = {k: hb[k] - ha[k] for k in set(ha) | set(hb) if hb[k] != ha[k]}
        keys = ('REG', 'STACK', 'SHARED', 'LOCAL')
        res_str = ' '.join(f'{k} {ra.get(k)}->{rn_.get(k)}' if ra.get(k) != rn_.get(k) else f'{k} {ra.get(k)}' for k in keys)
        status = 'identical' if a == b else ('same opcodes' if not diff else 'differs')
        if status != 'identical': same = False
        print(f'{short(fn)}\n    {res_str} | instructions {len(a)} -> {len(b)} | {status}')
        if diff:
            print('    opcode count changes: ' + ', '.join(f'{k} {v:+d}' for k, v in sorted(diff.items())))
    print('ALL IDENTICAL' if same else 'NOT ALL IDENTICAL')

main()
