#!/usr/bin/env python3
"""Renders the reference in man/reference.json (standard library only).

  generate.py man OUTDIR          p11proxy.8, p11proxy-broker.8, p11proxy.conf.5 into OUTDIR
  generate.py readme README.md    rewrites README.md's generated blocks from the source
  generate.py check README.md     exit 1, with a diff, when README.md's blocks differ from the source
  generate.py usage               the broker's usage text (what `p11proxy-broker --help` says)
  generate.py command-line-cs FILE  the broker's command line as C#: every option, the usage text, where
                                  each value goes and how it is parsed (BrokerOptions;
                                  src/Broker/Broker.csproj writes it into obj/ at build time)
  generate.py broker-options      the broker's option names, one a line

README.md's generated blocks sit between
  <!-- generated from man/reference.json: NAME (edit the source, then: man/generate.py readme README.md) -->
  <!-- end of generated NAME -->
for NAME in broker-synopsis, broker-options, module-address, module-config, module-environment.
"""
import difflib
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "reference.json")
VERSION_FILE = os.path.join(HERE, "..", "Directory.Build.props")


def load():
    with open(SOURCE, encoding="utf-8") as handle:
        return json.load(handle)


def version():
    with open(VERSION_FILE, encoding="utf-8") as handle:
        match = re.search(r"<Version>([^<]+)</Version>", handle.read())
    return match.group(1) if match else "0"


# --- text markup: `code` ------------------------------------------------------------

def roff_escape(text):
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return text


def roff_inline(text):
    """`code` -> bold; `name`(N) is then a reference in the usual form."""
    out, position = [], 0
    for match in re.finditer(r"`([^`]+)`", text):
        out.append(roff_escape(text[position:match.start()]))
        out.append("\\fB" + roff_escape(match.group(1)) + "\\fR")
        position = match.end()
    out.append(roff_escape(text[position:]))
    return "".join(out)


def roff_line(text):
    """A text line that cannot be taken for a request."""
    line = roff_inline(text)
    return "\\&" + line if line.startswith((".", "'")) else line


def markdown_cell(text):
    return text.replace("|", "\\|")


def code_cell(text):
    return "`" + text.replace("|", "\\|") + "`"


# --- the broker's options --------------------------------------------------------------------------

def option_usage(option):
    name = option["name"]
    part = f"{name} {option['value']}" if option.get("value") else name
    if option.get("repeatable"):
        return f"[{part}]..."
    return part if option.get("required") else f"[{part}]"


def broker_synopsis(ref, width=100):
    broker = ref["broker"]
    lines = []
    for mode, _ in broker["modes"]:
        words = [option_usage(o) for o in broker["options"] if mode in o["modes"]]
        prefix = f"p11proxy-broker {mode}"
        line, pad = prefix, " " * (len(prefix) + 1)
        current = prefix
        for word in words:
            if len(current) + 1 + len(word) > width:
                lines.append(current)
                current = pad + word
            else:
                current += " " + word
        lines.append(current)
    return lines


def strip_markup(text):
    return re.sub(r"`([^`]+)`", lambda m: m.group(1), text)


def wrap(text, width, indent):
    words, lines, current = text.split(), [], ""
    for word in words:
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        lines.append(current)
    return [(" " * indent if i else "") + line for i, line in enumerate(lines)]


USAGE_WIDTH = 100


def usage(ref):
    broker = ref["broker"]
    synopsis = broker_synopsis(ref, USAGE_WIDTH - len("usage: "))
    out = ["usage: " + synopsis[0]]
    out += ["       " + line for line in synopsis[1:]]
    out.append("")
    entries = [(mode, strip_markup(text)) for mode, text in broker["modes"]]
    for option in broker["options"]:
        head = option["name"] + (f" {option['value']}" if option.get("value") else "")
        if option.get("short"):
            head += f", {option['short']}"
        entries.append((head, strip_markup(option["text"]) + (" (repeatable)" if option.get("repeatable") else "")))
    body_width = USAGE_WIDTH - 2 - 23
    for head, body in entries:
        if len(head) > 22:
            out.append("  " + head)
            out += ["  " + " " * 23 + line.lstrip() for line in wrap(body, body_width, 0)]
        else:
            first, *rest = wrap(body, body_width, 0)
            out.append(f"  {head:<22} {first}")
            out += ["  " + " " * 23 + line for line in rest]
    return "\n".join(out)


# --- man pages -------------------------------------------------------------------------------------

def cs_string(text):
    # A JSON string literal is a valid C# regular string literal (ASCII, \", \\, \n, \uXXXX).
    return json.dumps(text, ensure_ascii=True)


def command_line_cs(ref):
    """The broker's command line (src/Broker/BrokerOptions.cs is the hand-written half)."""
    options = ref["broker"]["options"]
    modes = [mode for mode, _ in ref["broker"]["modes"]]
    properties, apply_value, apply_flag, aliases = {}, [], [], []
    for option in options:
        name, code = option["name"], option.get("code")
        where = f"man/reference.json: broker option {name}"
        if not isinstance(code, dict) or not code.get("set"):
            raise SystemExit(f"{where} has no \"code\": {{\"set\": PROPERTY, ...}}: say where the broker keeps its value "
                             "(docs/broker-command-line.md)")
        unknown_modes = set(option["modes"]) - set(modes)
        if unknown_modes:
            raise SystemExit(f"{where} names modes the broker lacks: {', '.join(sorted(unknown_modes))}")
        prop = code["set"]
        if option.get("short"):
            aliases.append(f"[{cs_string(option['short'])}] = {cs_string(name)}")
        if option.get("value"):
            if "type" not in code:
                raise SystemExit(f"{where} takes a value: its \"code\" needs a \"type\" (C#)")
            value_type, parse = code["type"], code.get("parse", "value")
            if option.get("repeatable"):
                declaration = (f"List<{value_type}>", f"public List<{value_type}> {prop} {{ get; }} = new();")
                apply_value.append(f"            case {cs_string(name)}: {prop}.Add({parse}); break;")
            else:
                initial = f" = {code['default']};" if "default" in code else ""
                declaration = (value_type, f"public {value_type} {prop} {{ get; private set; }}{initial}")
                apply_value.append(f"            case {cs_string(name)}: {prop} = {parse}; break;")
        else:
            if set(code) - {"set"}:
                raise SystemExit(f"{where} is a flag: its \"code\" takes only \"set\" (a bool property)")
            declaration = ("bool", f"public bool {prop} {{ get; private set; }}")
            apply_flag.append(f"            case {cs_string(name)}: {prop} = true; break;")
        if prop in properties and properties[prop] != declaration:
            raise SystemExit(f"{where}: property {prop} is declared differently by another option")
        properties[prop] = declaration

    def names(predicate):
        return ", ".join(cs_string(o["name"]) for o in options if predicate(o))

    lines = [
        "// Generated by man/generate.py from man/reference.json; edit that file, not this one.",
        "#nullable enable",
        "namespace P11Proxy.Broker;",
        "",
        "internal sealed partial class BrokerOptions",
        "{",
        "    /// <summary>What `p11proxy-broker --help` prints: the options of man/reference.json.</summary>",
        f"    public const string Usage = {cs_string(usage(ref))};",
        "",
        "    // ---- where each option's value goes (\"code\" in man/reference.json) ----",
    ]
    lines += [f"    {declaration}" for _, declaration in properties.values()]
    lines += [
        "",
        "    /// <summary>Short forms of documented options.</summary>",
        f"    private static readonly Dictionary<string, string> ShortForms = new() {{ {', '.join(aliases)} }};",
        "",
        "    /// <summary>Options only the listener of 'serve' takes: a worker is never started with them.</summary>",
        f"    private static readonly HashSet<string> ListenerOnly = [{names(lambda o: o['modes'] == ['serve'])}];",
        "",
        "    /// <summary>The modes man/reference.json documents.</summary>",
        f"    public static readonly string[] Modes = [{', '.join(cs_string(m) for m in modes)}];",
        "",
        "    /// <summary>Options that take a value.</summary>",
        f"    private static readonly HashSet<string> ValueOptions = [{names(lambda o: bool(o.get('value')))}];",
        "",
        "    /// <summary>Options that take none.</summary>",
        f"    private static readonly HashSet<string> FlagOptions = [{names(lambda o: not o.get('value'))}];",
        "",
        "    private void ApplyValue(string option, string value)",
        "    {",
        "        switch (option)",
        "        {",
        *apply_value,
        "            default: throw new InvalidOperationException($\"{option} is not an option with a value\");",
        "        }",
        "    }",
        "",
        "    private void ApplyFlag(string option)",
        "    {",
        "        switch (option)",
        "        {",
        *apply_flag,
        "            default: throw new InvalidOperationException($\"{option} is not a flag\");",
        "        }",
        "    }",
        "}",
        "",
    ]
    return "\n".join(lines)


def man_header(name, section, summary, ref):
    title = name.upper()
    return [
        f'.\\" Generated by man/generate.py from man/reference.json; edit that file, not this one.',
        f'.TH "{title}" "{section}" "{ref["date"]}" "p11proxy {version()}" "p11proxy"',
        ".SH NAME",
        f"{roff_escape(name)} \\- {roff_escape(summary)}",
    ]


def man_paragraphs(paragraphs):
    out = []
    for i, paragraph in enumerate(paragraphs):
        if i:
            out.append(".PP")
        out.append(roff_line(paragraph))
    return out


def man_list(items):
    """[(term, text)] as tagged paragraphs."""
    out = []
    for term, text in items:
        out += [".TP", "\\fB" + roff_escape(term) + "\\fR", roff_line(text)]
    return out


def man_examples(examples):
    out = []
    for text, command in examples:
        out += [".PP", roff_line(text), ".PP", ".RS 4", ".nf", roff_escape(command), ".fi", ".RE"]
    return out


def man_see_also(pages):
    refs = []
    for page in pages:
        name, section = page[:-1].split("(")
        refs.append(f"\\fB{roff_escape(name)}\\fR({section})")
    return [".SH SEE ALSO", ",\n".join(refs)]


def module_page(ref):
    m = ref["module"]
    out = man_header(m["name"], m["section"], m["summary"], ref)
    out += [".SH SYNOPSIS"] + [f"\\fB{roff_escape(s)}\\fR" + ("\n.br" if i < len(m["synopsis"]) - 1 else "")
                               for i, s in enumerate(m["synopsis"])]
    out += [".SH DESCRIPTION"] + man_paragraphs(m["description"])
    out += [".SH BROKER ADDRESS", roff_line(m["address_intro"])]
    for i, step in enumerate(m["address_order"], 1):
        out += [f'.IP "{i}." 4', roff_line(step)]
    out += [".PP", roff_line(m["address_forms_intro"])]
    out += man_list(m["address_forms"])
    out += [".PP", roff_line(m["address_settled"])]
    c = ref["config"]
    out += [".SH CONFIGURATION", roff_line(f"Keys of `{c['synopsis'][0]}` and the per-user file; see `p11proxy.conf`(5):")]
    out += man_list([(f"{key} = {value}", text) for key, value, text in c["keys"]])
    out += [".SH ENVIRONMENT"] + man_list(m["environment"])
    out += [".SH FILES"] + man_list(m["files"])
    out += [".SH EXAMPLES"] + man_examples(m["examples"])
    out += man_see_also(m["see_also"])
    return "\n".join(out) + "\n"


def config_page(ref):
    c = ref["config"]
    out = man_header(c["name"], c["section"], c["summary"], ref)
    out += [".SH SYNOPSIS"] + [f"\\fB{roff_escape(s)}\\fR" + ("\n.br" if i < len(c["synopsis"]) - 1 else "")
                               for i, s in enumerate(c["synopsis"])]
    out += [".SH DESCRIPTION"] + man_paragraphs(c["description"])
    out += [".SH KEYS"] + man_list([(f"{key} = {value}", text) for key, value, text in c["keys"]])
    out += [".SH ENVIRONMENT"] + man_list([e for e in ref["module"]["environment"]
                                            if e[0] in ("P11_KIT_SERVER_ADDRESS", "P11PROXY_TIMEOUT_MS", "XDG_CONFIG_HOME")])
    out += [".SH EXAMPLE", ".PP", ".RS 4", ".nf"] + [roff_escape(line) for line in c["example"].split("\n")] + [".fi", ".RE"]
    out += man_see_also(c["see_also"])
    return "\n".join(out) + "\n"


def broker_page(ref):
    b = ref["broker"]
    out = man_header(b["name"], b["section"], b["summary"], ref)
    out += [".SH SYNOPSIS", ".nf"] + [roff_escape(line) for line in broker_synopsis(ref)] + [".fi"]
    out += [".SH DESCRIPTION"] + man_paragraphs(b["description"])
    out += [".SH MODES"] + man_list(b["modes"])
    out += [".SH OPTIONS"]
    for option in b["options"]:
        head = "\\fB" + roff_escape(option["name"]) + "\\fR"
        if option.get("value"):
            head += " \\fI" + roff_escape(option["value"]) + "\\fR"
        if option.get("short"):
            head = "\\fB" + roff_escape(option["short"]) + "\\fR, " + head
        modes = " and ".join(option["modes"])
        text = option["text"] + (" (repeatable)" if option.get("repeatable") else "") + f". Modes: {modes}."
        out += [".TP", head, roff_line(text)]
    out += [".SH FILES"] + man_list(b["files"])
    out += [".SH EXAMPLES"] + man_examples(b["examples"])
    out += man_see_also(b["see_also"])
    return "\n".join(out) + "\n"


PAGES = {"p11proxy.8": module_page, "p11proxy-broker.8": broker_page, "p11proxy.conf.5": config_page}


# --- README blocks ---------------------------------------------------------------------------------

def readme_blocks(ref):
    m, c, b = ref["module"], ref["config"], ref["broker"]
    blocks = {}
    blocks["broker-synopsis"] = ["```"] + broker_synopsis(ref) + ["```"]
    rows = ["| option | modes | meaning |", "|---|---|---|"]
    for option in b["options"]:
        head = option["name"] + (f" {option['value']}" if option.get("value") else "")
        if option.get("short"):
            head += f", {option['short']}"
        text = option["text"] + (" (repeatable)" if option.get("repeatable") else "")
        rows.append(f"| {code_cell(head)} | {', '.join(option['modes'])} | {markdown_cell(text)} |")
    blocks["broker-options"] = rows
    out = [m["address_intro"], ""]
    out += [f"{i}. {step}" for i, step in enumerate(m["address_order"], 1)]
    out += ["", m["address_forms_intro"], "", "| form | meaning |", "|---|---|"]
    out += [f"| {code_cell(form)} | {markdown_cell(text)} |" for form, text in m["address_forms"]]
    out += ["", m["address_settled"]]
    blocks["module-address"] = out
    out = ["| key | meaning |", "|---|---|"]
    out += [f"| {code_cell(key + ' = ' + value)} | {markdown_cell(text)} |" for key, value, text in c["keys"]]
    blocks["module-config"] = out
    out = ["| variable | meaning |", "|---|---|"]
    out += [f"| {code_cell(name)} | {markdown_cell(text)} |" for name, text in m["environment"]]
    blocks["module-environment"] = out
    return blocks


BEGIN = "<!-- generated from man/reference.json: {} (edit the source, then: man/generate.py readme README.md) -->"
END = "<!-- end of generated {} -->"


def render_readme(text, ref):
    blocks = readme_blocks(ref)
    found = set()

    def replace(match):
        name = match.group(1)
        if name not in blocks:
            raise SystemExit(f"README names an unknown generated block '{name}'")
        found.add(name)
        return BEGIN.format(name) + "\n" + "\n".join(blocks[name]) + "\n" + END.format(name)

    pattern = re.compile(r"<!-- generated from man/reference\.json: ([a-z-]+) .*?-->\n.*?<!-- end of generated \1 -->", re.S)
    result = pattern.sub(replace, text)
    missing = set(blocks) - found
    if missing:
        raise SystemExit(f"README lacks the generated block(s) {', '.join(sorted(missing))}")
    return result


def main(argv):
    if len(argv) == 3 and argv[1] == "man":
        ref = load()
        os.makedirs(argv[2], exist_ok=True)
        for name, render in PAGES.items():
            with open(os.path.join(argv[2], name), "w", encoding="utf-8") as handle:
                handle.write(render(ref))
        return 0
    if len(argv) == 3 and argv[1] in ("readme", "check"):
        with open(argv[2], encoding="utf-8") as handle:
            text = handle.read()
        rendered = render_readme(text, load())
        if argv[1] == "readme":
            if rendered != text:
                with open(argv[2], "w", encoding="utf-8") as handle:
                    handle.write(rendered)
            return 0
        if rendered != text:
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), rendered.splitlines(True),
                                                       argv[2], "from man/reference.json"))
            print(f"{argv[2]} differs from man/reference.json: run man/generate.py readme {argv[2]}")
            return 1
        return 0
    if len(argv) == 2 and argv[1] == "usage":
        print(usage(load()))
        return 0
    if len(argv) == 3 and argv[1] == "command-line-cs":
        text = command_line_cs(load())
        os.makedirs(os.path.dirname(os.path.abspath(argv[2])), exist_ok=True)
        # Rewritten only when it changes, so an unchanged source does not recompile the broker.
        if not os.path.exists(argv[2]) or open(argv[2], encoding="utf-8").read() != text:
            with open(argv[2], "w", encoding="utf-8") as handle:
                handle.write(text)
        return 0
    if len(argv) == 2 and argv[1] == "broker-options":
        for option in load()["broker"]["options"]:
            print(option["name"])
            if option.get("short"):
                print(option["short"])
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
