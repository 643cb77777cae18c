#!/usr/bin/env python3
"""python3 dev/tools/funclen.py src/cuda   (TOP=n rows)
Lengths of the functions in C++/CUDA sources (lines from the signature's first line to the closing
brace), longest first. Heuristic: a '{' at namespace/class scope whose preceding text ends in ')' plus
qualifiers is a function body; lambdas inside a function count towards it."""
import re, sys, os

def strip(src):
    # remove comments and string/char literals, keep newlines
    out, i, n = [], 0, len(src)
    while i < n:
        if src.startswith('//', i):
            j = src.find('\n', i); j = n if j < 0 else j; i = j
        elif src.startswith('/*', i):
            j = src.find('*/', i + 2); j = n if j < 0 else j + 2
            out.append('\n' * src.count('\n', i, j)); i = j
        elif src[i] in '"\'':
            q = src[i]; j = i + 1
            while j < n and src[j] != q:
                j += 2 if src[j] == '\\' else 1
            out.append(q + q); i = j + 1
        else:
            out.append(src[i]); i += 1
    return ''.join(out)

def functions(path):
    s = strip(open(path).read())
    # drop preprocessor lines
    lines, cont = [], False
    for l in s.split('\n'):
        pre = cont or l.lstrip().startswith('#')
        cont = pre and l.rstrip().endswith('\\')
        lines.append('' if pre else l)
    s = '\n'.join(lines)
    res, stack, i, last_stmt_end = [], [], 0, 0
    while i < len(s):
        ch = s[i]
        if ch in ';}':
            if ch == '}' and stack:
                kind, start_line, name = stack.pop()
                if kind == 'func':
                    res.append((s.count('\n', 0, i) - start_line + 1, name, path, start_line + 1))
            last_stmt_end = i + 1
        elif ch == '{':
            head = s[last_stmt_end:i]
            in_func = any(k == 'func' for k, _, _ in stack)
            kind = 'block'
            h = head.strip()
            if not in_func and re.search(r'\)\s*(const|noexcept|override|final|mutable|->\s*[\w:<>&*, ]+|\s)*$', h) \
                    and not re.match(r'^(if|for|while|switch|catch)\b', h.split('\n')[-1].strip()) and '=' not in h.split('(')[0]:
                kind = 'func'
                names = [x for x in re.findall(r'([~\w:]+)\s*(?:<[^()]*>)?\s*\(', h) if x != '__launch_bounds__']
                name = names[0] if names else h[:40]
                first = last_stmt_end + (len(head) - len(head.lstrip()))
                # skip template/attribute lines: the signature starts at the head's first non-blank char
                stack.append((kind, s.count('\n', 0, first), name))
            else:
                stack.append((kind, 0, ''))
            last_stmt_end = i + 1
        i += 1
    return res

allf = []
for root in sys.argv[1:]:
    for dp, _, fs in os.walk(root):
        for f in fs:
            if f.endswith(('.cu', '.cuh', '.cpp', '.h')):
                allf += functions(os.path.join(dp, f))
allf.sort(reverse=True)
for n, name, path, line in allf[:int(os.environ.get('TOP', 15))]:
    print(f'{n:5d}  {path}:{line}  {name}')
