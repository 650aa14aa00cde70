"""The directory index pages of the web servers users run, read by rescue.repo.http's parser.

The nginx and Python pages are what nginx 1.22 (autoindex on) and Python 3.11's http.server
produced for the same folder; the Apache (mod_autoindex, Debian's default FancyIndexing with
HTMLTable and sort links) and lighttpd (mod_dirlisting) pages follow those servers' templates.
The folder holds: chunks/ and images/ (folders), a+b.c, rescue-repo.json, a name with a space,
a name of 75 characters that the servers shorten in the text but not in the link. The pages
are quoted as the servers send them, long lines included."""

# ruff: noqa: E501

from __future__ import annotations

import pytest

from rescue.repo.http import parse_listing
from rescue.repo.storage import FOLDER, OBJECT, Entry

LONG = "long-name-" + "x" * 61 + ".idx"

NGINX = f"""<html>
<head><title>Index of /repo/</title></head>
<body>
<h1>Index of /repo/</h1><hr><pre><a href="../">../</a>
<a href="chunks/">chunks/</a>                                            07-Dec-2026 10:14                   -
<a href="images/">images/</a>                                            07-Dec-2026 10:14                   -
<a href="a%2Bb.c">a+b.c</a>                                              07-Dec-2026 10:14                  10
<a href="{LONG}">long-name-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx..&gt;</a> 07-Dec-2026 10:14                   1
<a href="rescue-repo.json">rescue-repo.json</a>                                   07-Dec-2026 10:14                   2
<a href="web01%202024.x">web01 2024.x</a>                                       07-Dec-2026 10:14                   1
</pre><hr></body>
</html>
"""

PYTHON = f"""<!DOCTYPE HTML>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Directory listing for /repo/</title>
</head>
<body>
<h1>Directory listing for /repo/</h1>
<hr>
<ul>
<li><a href="a%2Bb.c">a+b.c</a></li>
<li><a href="chunks/">chunks/</a></li>
<li><a href="images/">images/</a></li>
<li><a href="{LONG}">{LONG}</a></li>
<li><a href="rescue-repo.json">rescue-repo.json</a></li>
<li><a href="web01%202024.x">web01 2024.x</a></li>
</ul>
<hr>
</body>
</html>
"""

APACHE = f"""<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">
<html>
 <head>
  <title>Index of /repo</title>
 </head>
 <body>
<h1>Index of /repo</h1>
  <table>
   <tr><th valign="top"><img src="/icons/blank.gif" alt="[ICO]"></th><th><a href="?C=N;O=D">Name</a></th><th><a href="?C=M;O=A">Last modified</a></th><th><a href="?C=S;O=A">Size</a></th><th><a href="?C=D;O=A">Description</a></th></tr>
   <tr><th colspan="5"><hr></th></tr>
<tr><td valign="top"><img src="/icons/back.gif" alt="[PARENTDIR]"></td><td><a href="/">Parent Directory</a></td><td>&nbsp;</td><td align="right">  - </td><td>&nbsp;</td></tr>
<tr><td valign="top"><a href="a+b.c"><img src="/icons/unknown.gif" alt="[   ]"></a></td><td><a href="a+b.c">a+b.c</a></td><td align="right">2026-12-07 10:14  </td><td align="right"> 10 </td><td>&nbsp;</td></tr>
<tr><td valign="top"><img src="/icons/folder.gif" alt="[DIR]"></td><td><a href="chunks/">chunks/</a></td><td align="right">2026-12-07 10:14  </td><td align="right">  - </td><td>&nbsp;</td></tr>
<tr><td valign="top"><img src="/icons/folder.gif" alt="[DIR]"></td><td><a href="images/">images/</a></td><td align="right">2026-12-07 10:14  </td><td align="right">  - </td><td>&nbsp;</td></tr>
<tr><td valign="top"><img src="/icons/unknown.gif" alt="[   ]"></td><td><a href="{LONG}">long-name-xxxxxxxxxx..&gt;</a></td><td align="right">2026-12-07 10:14  </td><td align="right">  1 </td><td>&nbsp;</td></tr>
<tr><td valign="top"><img src="/icons/unknown.gif" alt="[   ]"></td><td><a href="rescue-repo.json">rescue-repo.json</a></td><td align="right">2026-12-07 10:14  </td><td align="right">  2 </td><td>&nbsp;</td></tr>
<tr><td valign="top"><img src="/icons/unknown.gif" alt="[   ]"></td><td><a href="web01%202024.x">web01 2024.x</a></td><td align="right">2026-12-07 10:14  </td><td align="right">  1 </td><td>&nbsp;</td></tr>
   <tr><th colspan="5"><hr></th></tr>
</table>
<address>Apache/2.4.62 (Debian) Server at images.lan Port 80</address>
</body></html>
"""

LIGHTTPD = f"""<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>Index of /repo/</title>
<style type="text/css">
a, a:active {{text-decoration: none; color: blue;}}
</style>
</head>
<body>
<h2>Index of /repo/</h2>
<div class="list">
<table summary="Directory Listing" cellpadding="0" cellspacing="0">
<thead><tr><th class="n">Name</th><th class="m">Last Modified</th><th class="s">Size</th><th class="t">Type</th></tr></thead>
<tbody>
<tr class="d"><td class="n"><a href="../">..</a>/</td><td class="m">&nbsp;</td><td class="s">- &nbsp;</td><td class="t">Directory</td></tr>
<tr class="d"><td class="n"><a href="chunks/">chunks</a>/</td><td class="m">2026-Dec-07 10:14:00</td><td class="s">- &nbsp;</td><td class="t">Directory</td></tr>
<tr class="d"><td class="n"><a href="images/">images</a>/</td><td class="m">2026-Dec-07 10:14:00</td><td class="s">- &nbsp;</td><td class="t">Directory</td></tr>
<tr><td class="n"><a href="a%2Bb.c">a+b.c</a></td><td class="m">2026-Dec-07 10:14:00</td><td class="s">0.1K</td><td class="t">application/octet-stream</td></tr>
<tr><td class="n"><a href="{LONG}">{LONG}</a></td><td class="m">2026-Dec-07 10:14:00</td><td class="s">0.1K</td><td class="t">application/octet-stream</td></tr>
<tr><td class="n"><a href="rescue-repo.json">rescue-repo.json</a></td><td class="m">2026-Dec-07 10:14:00</td><td class="s">0.1K</td><td class="t">application/json</td></tr>
<tr><td class="n"><a href="web01%202024.x">web01 2024.x</a></td><td class="m">2026-Dec-07 10:14:00</td><td class="s">0.1K</td><td class="t">application/octet-stream</td></tr>
</tbody>
</table>
</div>
<div class="foot">lighttpd/1.4.69</div>
<script type="text/javascript">
// <!--
var rows = '<a href="../../elsewhere">not a link</a>';
// -->
</script>
</body>
</html>
"""

EXPECTED = [
    Entry("a+b.c", OBJECT),
    Entry("chunks", FOLDER),
    Entry("images", FOLDER),
    Entry(LONG, OBJECT),
    Entry("rescue-repo.json", OBJECT),
    Entry("web01 2024.x", OBJECT),
]


@pytest.mark.parametrize("page", [NGINX, PYTHON, APACHE, LIGHTTPD], ids=["nginx", "python", "apache", "lighttpd"])
def test_every_servers_index_lists_the_same_entries(page):
    assert parse_listing(page, "/repo/") == EXPECTED


def test_the_folder_may_be_given_without_its_slash():
    assert parse_listing(NGINX, "/repo") == EXPECTED


def test_only_links_to_one_name_inside_the_folder_count():
    page = """<a href="./dot-slash">x</a> <a href="/repo/absolute">x</a> <a href="/repo/deeper/name">x</a>
    <a href="/other/name">x</a> <a href="http://elsewhere.example/repo/far">x</a> <a href="#top">x</a>
    <a href="name#frag">x</a> <a href="?C=M;O=A">x</a> <a href="mailto:root@localhost">x</a>
    <a href="sub/deeper/">x</a> <a href="./">x</a> <a href="..">x</a> <a>no href</a> <a href="">x</a>
    <a href="a%2Fb">encoded slash</a> <a href="amp&amp;ersand">x</a> <A HREF="UPPER">x</A>"""
    assert parse_listing(page, "/repo/") == [
        Entry("UPPER", OBJECT),
        Entry("absolute", OBJECT),
        Entry("amp&ersand", OBJECT),
        Entry("dot-slash", OBJECT),
    ]


def test_the_top_of_a_server_lists_too():
    page = '<a href="../">../</a><a href="repo/">repo/</a><a href="readme.txt">readme.txt</a>'
    assert parse_listing(page, "/") == [Entry("readme.txt", OBJECT), Entry("repo", FOLDER)]


def test_a_page_without_links_lists_nothing():
    assert parse_listing("<html><body><h1>403 Forbidden</h1></body></html>", "/repo/") == []
    assert parse_listing("not html at all <<<", "/repo/") == []
