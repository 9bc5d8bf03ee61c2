"""JSON read with one promise: content that is not what was asked for is an InputError
naming the file (and line), never a traceback. Caffe-free.

    read_json('OUT/train_iter_4.json')              # a dict, or InputError naming it
    parse_json(line, 'OUT/log.jsonl line 3')        # the same for text already read
    read_json(path, kind=list)                      # another top-level type

json.load raises JSONDecodeError on bad syntax, UnicodeDecodeError on binary bytes and
RecursionError on deeply nested arrays ([[[[...); valid JSON of another shape (a list
where an object belongs) fails later in its caller with a TypeError. Here each is an
InputError, and a document nested deeper than MAX_DEPTH is refused too: a caller
walking it recursively (metrics.jsonable, json.dumps) would hit the recursion limit.
What the fields of a dict must hold stays the caller's check.
"""
import json

from project import InputError

MAX_DEPTH = 64  # far more than any file of this project nests; far below Python's recursion limit

KIND_NAMES = {dict: 'object', list: 'array', str: 'string'}


def _kind_name(value):
    return KIND_NAMES.get(type(value), 'null' if value is None else type(value).__name__)


def _depth(value):
    """The nesting depth of arrays and objects in `value`, walked without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def parse_json(text, where, kind=dict):
    """The JSON value in `text` (str or bytes: UTF-8, a BOM allowed), of type `kind`
    (dict, list, ...; None: any); InputError naming `where` (a file, a file and line)
    when it does not parse, is binary, nests too deep or is of another type."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise InputError('%s: JSON nested too deeply' % where)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise InputError('%s: not valid JSON (%s)' % (where, str(e).splitlines()[0][:200]))
    if _depth(value) > MAX_DEPTH:
        raise InputError('%s: JSON nested too deeply (more than %d levels)' % (where, MAX_DEPTH))
    if kind is not None and not isinstance(value, kind):
        raise InputError('%s: expected a JSON %s, found %s'
                         % (where, KIND_NAMES.get(kind, kind.__name__), _kind_name(value)))
    return value


def read_json(path, kind=dict):
    """parse_json of the file `path`; an unreadable file is an InputError naming it too."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        raise InputError('%s: cannot read (%s)' % (path, e.strerror or e))
    return parse_json(data, path, kind)
