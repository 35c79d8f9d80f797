#!/usr/bin/env python3
"""Writes a man page (roff) from one source, so that it cannot drift from what it documents.

  mkman.py --page PAGE.md --help-of BIN [--commands] --out FILE --version V
      PAGE.md is the hand-written part (title line, DESCRIPTION, FILES, ...). The line
      "@HELP@" in it becomes BIN --help; with --commands, "@COMMANDS@" becomes the --help of
      every command BIN --help lists under "commands:".
  mkman.py --page docs/configuration.md --config --out FILE --version V
      mqpki.conf(5) from the configuration reference: its table becomes one entry per key.

Markdown understood: "# name(S) -- summary" (first line), "## SECTION", "### Sub", paragraphs,
"- " lists, ``` blocks, | tables |, `code`, **bold**, *italic*, [text](link).
"""
import argparse
import datetime
import os
import re
import subprocess
import sys


def esc(text):
    """Escapes text for roff (outside requests)."""
    text = text.replace("\\", "\\e")
    return text


def inline(text):
    text = esc(text)
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"`([^`]+)`", lambda m: "\\fB" + m.group(1).replace("-", "\\-") + "\\fR", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"\\fB\1\\fR", text)
    text = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"\\fI\1\\fR", text)
    return text


def line_out(out, text):
    """One text line; a leading . or ' would be read as a request."""
    if text[:1] in (".", "'"):
        text = "\\&" + text
    out.append(text)


def preformatted(out, lines):
    out.append(".PP")
    out.append(".nf")
    for ln in lines:
        line_out(out, esc(ln).replace("-", "\\-"))
    out.append(".fi")


def run_help(argv):
    env = dict(os.environ, NO_COLOR="1", COLUMNS="80")
    # A sanitizer build's binaries: a leak report at exit is not the page's business.
    env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS"), "detect_leaks=0"]))
    p = subprocess.run(argv + ["--help"], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit("mkman: %s --help exited %d: %s" % (" ".join(argv), p.returncode, p.stderr))
    return p.stdout.rstrip("\n").split("\n")


def commands_of(help_lines):
    """The command names listed under "commands:" (two or more spaces before the summary)."""
    names, inside = [], False
    for ln in help_lines:
        if ln.strip().lower() == "commands:":
            inside = True
            continue
        if inside:
            m = re.match(r"^  (\S+(?: \S+)*?)\s{2,}\S", ln)
            if not m:
                if ln.strip() == "":
                    break
                continue
            names.append(m.group(1))
    return names


def table_rows(lines):
    rows = []
    for ln in lines:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", ln.strip())[1:-1]]
        if all(re.fullmatch(r":?-+:?", c) for c in cells if c):
            continue
        rows.append([c.replace("\\|", "|") for c in cells])
    return rows


def render(md_lines, out, args, config=False):
    i, para = 0, []

    def flush():
        if para:
            out.append(".PP")
            for p in para:
                line_out(out, inline(p))
            para.clear()

    while i < len(md_lines):
        ln = md_lines[i].rstrip("\n")
        if ln.strip() == "@HELP@":
            flush()
            preformatted(out, run_help([args.help_of]))
        elif ln.strip() == "@COMMANDS@":
            flush()
            for name in commands_of(run_help([args.help_of])):
                out.append(".SS \"%s\"" % esc(name))
                preformatted(out, run_help([args.help_of] + name.split()))
        elif ln.startswith("```"):
            flush()
            block = []
            i += 1
            while i < len(md_lines) and not md_lines[i].startswith("```"):
                block.append(md_lines[i].rstrip("\n"))
                i += 1
            preformatted(out, block)
        elif ln.startswith("### "):
            flush()
            out.append(".SS \"%s\"" % inline(ln[4:]))
        elif ln.startswith("## "):
            flush()
            out.append(".SH \"%s\"" % inline(ln[3:].upper()))
        elif ln.startswith("|"):
            flush()
            block = []
            while i < len(md_lines) and md_lines[i].startswith("|"):
                block.append(md_lines[i])
                i += 1
            rows = table_rows(block)
            header, body = rows[0], rows[1:]
            if config and [h.lower() for h in header] == ["section", "key", "default", "meaning"]:
                section = None
                for r in body:
                    if r[0]:
                        section = r[0]
                        out.append(".SS \"%s\"" % inline(section))
                    out.append(".TP")
                    line_out(out, "%s (default: %s)" % (inline(r[1]), inline(r[2])))
                    line_out(out, inline(r[3]))
            else:
                for r in body:
                    out.append(".TP")
                    line_out(out, inline(r[0]))
                    line_out(out, inline(" ".join(c for c in r[1:] if c)))
            continue
        elif re.match(r"^\s*[-*] ", ln):
            flush()
            item = [re.sub(r"^\s*[-*] ", "", ln)]
            while (i + 1 < len(md_lines) and md_lines[i + 1].startswith("  ")
                   and md_lines[i + 1].strip()):
                i += 1
                item.append(md_lines[i].strip())
            out.append(".IP \\(bu 2")
            line_out(out, inline(" ".join(item)))
        elif ln.strip() == "":
            flush()
        else:
            para.append(ln.strip())
        i += 1
    flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--page", required=True)
    ap.add_argument("--help-of")
    ap.add_argument("--commands", action="store_true")
    ap.add_argument("--config", action="store_true")
    ap.add_argument("--out", required=True)
    ap.add_argument("--version", required=True)
    args = ap.parse_args()

    with open(args.page, encoding="utf-8") as f:
        lines = f.read().split("\n")
    # A reproducible date: SOURCE_DATE_EPOCH, else the source's modification time.
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", os.path.getmtime(args.page)))
    date = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%d")
    out = []
    if args.config:
        name, section, summary = "mqpki.conf", "5", "configuration file of an mqpki CA"
        body = lines[1:]
        body.insert(0, "## DESCRIPTION")
        body.append("## SEE ALSO")
        body.append("**mqpki**(1), **mqpkid**(8)")
    else:
        m = re.match(r"^# (\S+)\((\w+)\) -- (.*)$", lines[0])
        if not m:
            sys.exit("mkman: %s: first line must be '# name(S) -- summary'" % args.page)
        name, section, summary = m.groups()
        body = lines[1:]
        if args.commands and not any(ln.strip() == "@COMMANDS@" for ln in body):
            sys.exit("mkman: %s: no @COMMANDS@ line" % args.page)
    out.append(".\\\" Generated by packaging/man/mkman.py from %s; do not edit."
               % os.path.basename(args.page))
    out.append(".TH \"%s\" \"%s\" \"%s\" \"mqpki %s\" \"mqpki manual\""
               % (name.upper(), section, date, args.version))
    out.append(".SH NAME")
    out.append("%s \\- %s" % (esc(name).replace("-", "\\-"), inline(summary)))
    render(body, out, args, config=args.config)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
