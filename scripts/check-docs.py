#!/usr/bin/env python3
"""Check the user documentation against the repository (stdlib only).

Run from anywhere: `python3 scripts/check-docs.py`. Exits 1 and prints every
problem when:

1. A Markdown link in README.md or docs/*.md leaves the repository: a relative
   target that escapes the repository root (`../shared/...`), an absolute
   path, a scheme other than http(s)/mailto, or a relative target that does
   not exist. A `#fragment` pointing into a Markdown file of the repository
   must name one of its headings (GitHub's anchor rules). http(s) links
   (public specifications) are not fetched.
2. A config key defined in gateway/src/config.rs (the serde structs reachable
   from `Config`) has no row in docs/configuration.md. Each TOML table needs a
   heading naming it (`## [server]`, `## [[clients]]`, `### [upstream.oauth]`)
   followed by a Markdown table whose first column holds each key as
   `` `key` ``.
3. docs/configuration.md lists a key its table does not have, or a key's row
   does not show the default config.rs gives it (for defaults that are
   literals: numbers, strings, booleans, enum values, socket addresses).
"""

import os
import re
import sys
import unicodedata

ROOT = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
CONFIG_RS = os.path.join(ROOT, "gateway", "src", "config.rs")
CONFIG_MD = os.path.join(ROOT, "docs", "configuration.md")

problems = []


def rel(path):
    return os.path.relpath(path, ROOT)


def problem(where, message):
    problems.append("%s: %s" % (where, message))


# ----------------------------------------------------------------- Markdown


def strip_code(lines):
    """Yield (line number, text) outside fenced code blocks, with inline code
    spans blanked (links inside code are not links)."""
    for number, line in strip_code_headings(lines):
        yield number, re.sub(r"(`+)(.+?)\1", lambda m: " " * len(m.group(0)), line)


INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^\s)]*)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def links(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for number, line in strip_code(lines):
        for match in INLINE_LINK.finditer(line):
            yield number, match.group(1).strip("<>")
        match = REFERENCE_DEF.match(line)
        if match:
            yield number, match.group(1).strip("<>")


def heading_text(raw):
    """The rendered text of a heading: code spans keep their content, links
    their text, emphasis markers go."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", raw)
    text = text.replace("`", "")
    text = re.sub(r"(\*\*|__|\*|_)(\S.*?)\1", r"\2", text)
    return text


def slug(text):
    """GitHub's heading anchor: lower case, punctuation other than `-` and `_`
    dropped, spaces to hyphens."""
    text = unicodedata.normalize("NFC", text).strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in "-_ ")
    return text.replace(" ", "-")


def anchors(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    seen = {}
    out = set()
    for _, line in strip_code_headings(lines):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(heading_text(match.group(2)))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else "%s-%d" % (base, n))
    return out


def strip_code_headings(lines):
    """Lines outside fenced code blocks, unchanged (headings keep their code spans)."""
    fence = None
    for number, line in enumerate(lines, 1):
        stripped = line.lstrip()
        match = re.match(r"(`{3,}|~{3,})", stripped)
        if match:
            marker = match.group(1)
            if fence is None:
                fence = marker[0] * len(marker)
                continue
            if stripped.startswith(fence):
                fence = None
                continue
        if fence is None:
            yield number, line


def check_links(path):
    base_dir = os.path.dirname(path)
    for number, target in links(path):
        where = "%s:%d" % (rel(path), number)
        if not target:
            problem(where, "empty link target")
            continue
        scheme = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*):", target)
        if scheme:
            if scheme.group(1).lower() in ("http", "https", "mailto"):
                continue
            problem(where, "link %r uses the scheme %s: link into the repository instead" % (target, scheme.group(1)))
            continue
        if target.startswith("//"):
            problem(where, "link %r is protocol-relative: write https://" % target)
            continue
        file_part, _, fragment = target.partition("#")
        file_part = file_part.split("?", 1)[0]
        if file_part.startswith("/"):
            problem(where, "link %r is an absolute path: use a path relative to %s" % (target, rel(path)))
            continue
        if file_part:
            resolved = os.path.realpath(os.path.join(base_dir, file_part))
        else:
            resolved = os.path.realpath(path)
        if resolved != ROOT and not resolved.startswith(ROOT + os.sep):
            problem(where, "link %r points outside the repository (%s)" % (target, resolved))
            continue
        if not os.path.exists(resolved):
            problem(where, "link %r: %s does not exist" % (target, rel(resolved)))
            continue
        if fragment and resolved.endswith(".md") and os.path.isfile(resolved):
            if fragment.lower() not in anchors(resolved):
                problem(where, "link %r: %s has no heading with the anchor #%s" % (target, rel(resolved), fragment))


# ---------------------------------------------------------------- config.rs


def rust_structs(text):
    """name -> list of (field, type, attributes) for every `pub struct` with
    named fields."""
    structs = {}
    for match in re.finditer(r"^pub struct (\w+)\s*\{\n(.*?)^\}", text, re.M | re.S):
        fields = []
        attrs = []
        for line in match.group(2).splitlines():
            line = line.strip()
            if line.startswith("#["):
                attrs.append(line)
                continue
            if line.startswith("//") or not line:
                continue
            field = re.match(r"pub\s+(\w+)\s*:\s*(.+?),?$", line)
            if field:
                fields.append((field.group(1), field.group(2).strip().rstrip(","), attrs))
            attrs = []
        structs[match.group(1)] = fields
    return structs


def rust_enums(text):
    """name -> {variant: serialised name} for the serde enums."""
    enums = {}
    for match in re.finditer(r"((?:#\[[^\n]*\]\n)*)pub enum (\w+)\s*\{\n(.*?)^\}", text, re.M | re.S):
        attrs, name, body = match.groups()
        lower = 'rename_all = "lowercase"' in attrs
        variants = {}
        rename = None
        for line in body.splitlines():
            line = line.strip()
            explicit = re.match(r'#\[serde\(rename = "([^"]+)"\)\]', line)
            if explicit:
                rename = explicit.group(1)
                continue
            variant = re.match(r"(\w+)\s*,", line)
            if variant:
                variants[variant.group(1)] = rename or (variant.group(1).lower() if lower else variant.group(1))
                rename = None
        enums[name] = variants
    return enums


def rust_defaults(text, enums):
    """`mod defaults` function name -> the default as text, when it is a literal."""
    module = re.search(r"^mod defaults \{\n(.*?)^\}", text, re.M | re.S)
    if not module:
        return {}
    out = {}
    for match in re.finditer(r"pub fn (\w+)\(\)\s*->\s*[^{]+\{\s*(.*?)\s*\}\n", module.group(1), re.S):
        value = literal(match.group(2).strip(), enums)
        if value is not None:
            out[match.group(1)] = value
    return out


def literal(expr, enums):
    expr = re.sub(r"\.(into|to_owned|to_string)\(\)$", "", expr).strip()
    string = re.fullmatch(r'(?:PathBuf::from|String::from)?\(?"([^"]*)"\)?', expr)
    if string:
        return string.group(1)
    if expr in ("true", "false"):
        return expr
    if re.fullmatch(r"[0-9_ *+()]+", expr):
        try:
            return str(eval(expr.replace("_", ""), {"__builtins__": {}}, {}))
        except Exception:
            return None
    addr = re.fullmatch(r"SocketAddr::from\(\(\[(\d+),\s*(\d+),\s*(\d+),\s*(\d+)\],\s*(\d+)\)\)", expr)
    if addr:
        return "%s.%s.%s.%s:%s" % addr.groups()
    variant = re.fullmatch(r"(?:super::)?(\w+)::(\w+)", expr)
    if variant and variant.group(1) in enums:
        return enums[variant.group(1)].get(variant.group(2))
    return None


def inner_type(rust_type):
    """`Option<Vec<X>>` -> X."""
    while True:
        match = re.fullmatch(r"(?:Option|Vec)<(.+)>", rust_type)
        if not match:
            return rust_type
        rust_type = match.group(1).strip()


def config_keys():
    """(table, key, default or None) for every key reachable from `Config`,
    and the set of table names."""
    with open(CONFIG_RS, encoding="utf-8") as f:
        text = f.read()
    # Only the code before the tests module defines the config.
    text = text.split("#[cfg(test)]")[0]
    structs = rust_structs(text)
    enums = rust_enums(text)
    defaults = rust_defaults(text, enums)
    if "Config" not in structs:
        problem(rel(CONFIG_RS), "no `pub struct Config` found: update scripts/check-docs.py")
        return [], set()
    keys = []
    tables = set()

    def walk(struct, prefix):
        for field, rust_type, attrs in structs[struct]:
            attr_text = " ".join(attrs)
            if re.search(r"serde\([^)]*\bskip\b", attr_text):
                continue
            renamed = re.search(r'serde\([^)]*\brename = "([^"]+)"', attr_text)
            name = renamed.group(1) if renamed else field
            nested = inner_type(rust_type)
            if nested in structs:
                table = "%s.%s" % (prefix, name) if prefix else name
                tables.add(table)
                walk(nested, table)
                continue
            default = None
            named = re.search(r'default = "defaults::(\w+)"', attr_text)
            if named:
                default = defaults.get(named.group(1))
            elif re.search(r"serde\(default\)", attr_text) and rust_type == "bool":
                default = "false"
            required = "default" not in attr_text and not rust_type.startswith("Option<")
            keys.append((prefix, name, default, required))

    walk("Config", "")
    return keys, tables


def doc_sections(path):
    """table name -> list of (line number, line) from its heading to the next heading."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    sections = {}
    current = None
    for number, line in strip_code_headings(lines):
        heading = HEADING.match(line)
        if heading:
            names = re.findall(r"\[\[?([A-Za-z_][A-Za-z0-9_.]*)\]\]?", heading.group(2))
            current = None
            if len(names) == 1:
                current = names[0]
                sections.setdefault(current, [])
            continue
        if current is not None:
            sections[current].append((number, line))
    return sections


def row_key(line):
    """The key a table row documents: its first cell when that is one code span."""
    if not line.lstrip().startswith("|"):
        return None
    cells = line.strip().strip("|").split("|")
    match = re.fullmatch(r"\s*`([A-Za-z_][A-Za-z0-9_]*)`\s*", cells[0])
    return match.group(1) if match else None


def shows_default(line, default):
    normalised = re.sub(r"(?<=\d)[,_](?=\d{3})", "", line)
    if re.fullmatch(r"\d+", default):
        return re.search(r"(?<![\d.])%s(?![\d.])" % default, normalised) is not None
    return default in normalised


def check_config():
    if not os.path.isfile(CONFIG_MD):
        problem(rel(CONFIG_MD), "missing")
        return
    keys, tables = config_keys()
    sections = doc_sections(CONFIG_MD)
    documented = {}
    for table, lines in sections.items():
        for number, line in lines:
            key = row_key(line)
            if key and key != "key":
                documented.setdefault(table, {})[key] = (number, line)
    known = {}
    for table, key, default, required in keys:
        known.setdefault(table, set()).add(key)
        full = "%s.%s" % (table, key) if table else key
        if table not in sections:
            problem(rel(CONFIG_MD), "config key %s: no heading naming the table [%s]" % (full, table))
            continue
        row = documented.get(table, {}).get(key)
        if row is None:
            problem(rel(CONFIG_MD), "config key %s (gateway/src/config.rs) is not documented: add a row `%s` under [%s]" % (full, key, table))
            continue
        number, line = row
        where = "%s:%d" % (rel(CONFIG_MD), number)
        if required and "required" not in line:
            problem(where, "config key %s has no default in config.rs: its row should say `required`" % full)
        if default is not None and not shows_default(line, default):
            problem(where, "config key %s: config.rs's default is %r, the row does not show it" % (full, default))
    for table, rows in documented.items():
        if table not in tables and table not in known:
            problem(rel(CONFIG_MD), "[%s] is not a table of gateway/src/config.rs" % table)
            continue
        for key, (number, _) in rows.items():
            if key not in known.get(table, set()):
                problem("%s:%d" % (rel(CONFIG_MD), number), "`%s` is not a key of [%s] in gateway/src/config.rs" % (key, table))


def main():
    markdown = [os.path.join(ROOT, "README.md")]
    docs = os.path.join(ROOT, "docs")
    if os.path.isdir(docs):
        markdown += sorted(os.path.join(docs, n) for n in os.listdir(docs) if n.endswith(".md"))
    else:
        problem("docs/", "missing")
    for path in markdown:
        if os.path.isfile(path):
            check_links(path)
        else:
            problem(rel(path), "missing")
    check_config()
    if problems:
        for line in problems:
            print(line)
        print("check-docs: %d problem(s)" % len(problems))
        return 1
    print("check-docs: links in README.md and docs/*.md stay in the repository; docs/configuration.md covers every config key")
    return 0


if __name__ == "__main__":
    sys.exit(main())
