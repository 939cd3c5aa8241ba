--[[
quarto.lua: the subset of Quarto the report uses, as one pandoc Lua filter (convscope.report.render runs it).

* {{< include path >}} (a paragraph of its own): the file is read with pandoc.read and its blocks spliced in;
  includes nest, cycles are errors. Paths are relative to the project (the main document's folder).
* {{< var a.b >}}: the value of a.b in the metadata (render.py passes _variables.yml with --metadata-file).
* Anything outside the subset (executable cells, divs and callouts, raw HTML/TeX, spans, other shortcodes,
  images outside the project, front matter in included files) stops pandoc with one line "file:line: what".
  Pandoc's Markdown reader has no source positions, so the line is the first one of the file holding the
  construct's text.
* Figures #fig-* and tables #tbl-* are numbered in document order as Quarto does ("Figure 1: caption");
  @fig-x reads "Figure 1" and links to it (-@fig-x reads "1"); any other citation is an error.
* Typst output: image paths are made relative to a direct subfolder of the project (where render.py writes
  the .typ file), and "..." stays three dots.
--]]

-- Included files are read as pandoc read the main document (render.py's PANDOC_FROM).
local FROM = { format = "markdown", extensions = PANDOC_READER_OPTIONS.extensions }
local FRONT_MATTER = { title = true, subtitle = true, author = true, date = true, abstract = true }
local PREFIX = { fig = "Figure", tbl = "Table" }
local HEADING_CLASSES = { unnumbered = true, appendix = true }

local project, meta
local sources = {} -- file -> its text, for line numbers
local labels = {} -- id -> "file:line" of its definition
local references = {} -- { id, where } in document order
local numbers = {} -- id -> figure or table number

local function kind_of(id)
  return id:match("^(fig)%-") or id:match("^(tbl)%-")
end

-- "file:line" of the first line of file, from line `from` on, that holds needle (line 1 when none does).
local function where(file, needle, from)
  local n = 0
  for line in (sources[file] .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if needle and n >= (from or 1) and line:find(needle, 1, true) then
      return file .. ":" .. n, n
    end
  end
  return file .. ":1", 1
end

local function fail(file, needle, message)
  error(where(file, needle) .. ": " .. message, 0)
end

local function variable(key, file)
  local node = meta
  for part in key:gmatch("[^.]+") do
    local kind = pandoc.utils.type(node)
    if (kind ~= "table" and kind ~= "Meta") or node[part] == nil then
      fail(file, key, "unknown variable {{< var " .. key .. " >}}; define " .. key .. " in _variables.yml")
    end
    node = node[part]
  end
  local kind = pandoc.utils.type(node)
  if kind == "boolean" then
    return pandoc.Inlines(tostring(node))
  elseif kind == "string" then
    return pandoc.Inlines(node)
  elseif kind == "Inlines" then
    return node:clone()
  end
  fail(file, key, "variable " .. key .. " is a " .. kind .. ", not one line of text; point {{< var >}} at a single value")
end

-- Replaces {{< var ... >}} in a list of inlines; any other shortcode is an error.
local function shortcodes(file)
  return function(inlines)
    local out, i = pandoc.Inlines({}), 1
    while i <= #inlines do
      local el = inlines[i]
      local start = el.t == "Str" and el.text:find("{{<", 1, true)
      if not start then
        out:insert(el)
        i = i + 1
      else
        if start > 1 then out:insert(pandoc.Str(el.text:sub(1, start - 1))) end
        local text, j = el.text:sub(start), i
        while not text:find(">}}", 1, true) and j < #inlines do
          j = j + 1
          text = text .. pandoc.utils.stringify(inlines[j]):gsub("^$", " ")
        end
        local close = text:find(">}}", 1, true) or fail(file, "{{<", "shortcode {{< is never closed with >}}")
        local name, arg = text:sub(1, close + 2):match("^{{<%s*(%S*)%s*(.-)%s*>}}$")
        if name == "var" then
          out:extend(variable(arg, file))
        elseif name == "include" then
          fail(file, arg, "{{< include " .. arg .. " >}} must be a paragraph of its own (blank lines around it)")
        else
          fail(file, name, "unsupported shortcode {{< " .. name .. " ... >}}; the fallback renderer knows include and var")
        end
        local rest = text:sub(close + 3)
        if rest ~= "" then
          inlines[j] = pandoc.Str(rest) -- may hold the next shortcode
          i = j
        else
          i = j + 1
        end
      end
    end
    return out
  end
end

local function label(id, file)
  local first = labels[id]
  if first then
    local at = where(file, "#" .. id, first.file == file and first.line + 1 or 1)
    error(at .. ": label #" .. id .. " is already used at " .. first.where .. "; labels must be unique", 0)
  end
  local at, line = where(file, "#" .. id)
  labels[id] = { file = file, line = line, where = at }
end

local function check_image(img, file)
  local src = img.src
  if src:match("^%a[%w+.-]*:") or pandoc.path.is_absolute(src) then
    fail(file, src, "image " .. src .. " must be a file path relative to the project (no URLs, no absolute paths)")
  end
  local fh = io.open(pandoc.path.join({ project, src }), "rb")
  if not fh then
    fail(file, src, "image " .. pandoc.path.join({ project, src }) .. " does not exist; paths are relative to " .. project)
  end
  fh:close()
  for key in pairs(img.attributes) do
    if key ~= "width" and key ~= "height" then
      fail(file, src, "image attribute " .. key .. " is not supported; use {#fig-name width=80%}")
    end
  end
  if img.identifier:match("^fig%-") then
    fail(file, "#" .. img.identifier, "figure #" .. img.identifier .. " must be a paragraph of its own (blank lines around)")
  end
end

-- The subset check, on the parsed blocks of one file.
local function checks(file)
  local function unsupported(needle, what)
    return function() fail(file, needle, what .. " not supported by the fallback renderer; use plain Markdown") end
  end
  return {
    Div = unsupported(":::", "fenced divs and callouts (':::') are"),
    Span = unsupported("]{", "bracketed spans ([text]{...}) are"),
    RawInline = function(raw)
      if raw.format == "html" and raw.text:match("^<!%-%-") then return {} end -- a comment: invisible, as in Quarto
      fail(file, raw.text, "raw " .. raw.format:upper() .. " " .. raw.text .. " is not supported (escape a literal < as \\<)")
    end,
    RawBlock = function(raw)
      if raw.format == "html" and raw.text:match("^<!%-%-.*%-%->%s*$") then return {} end
      fail(file, raw.text:match("[^\n]*"), "raw " .. raw.format:upper() .. " is not supported; use Markdown")
    end,
    Code = function(code)
      if code.text:match("^{[%w_]+") then
        fail(file, code.text:match("^{[^}]*}"), "code block " .. code.text:match("^{[^}]*}") ..
          ": executable cells are not supported; write ```text (or another language) instead")
      end
    end,
    CodeBlock = function(block)
      if block.text:match("^#|") then fail(file, "#|", "cell options '#|': executable cells are not supported") end
    end,
    Header = function(h)
      if h.level > 4 then fail(file, pandoc.utils.stringify(h), "heading level " .. h.level .. " is too deep; use # to ####") end
      for _, class in ipairs(h.classes) do
        if not HEADING_CLASSES[class] then
          fail(file, "." .. class, "heading class ." .. class .. " is not supported; use {.unnumbered} or {.appendix}")
        end
      end
    end,
    Figure = function(fig)
      if fig.identifier ~= "" then label(fig.identifier, file) end -- pandoc moved it there from the image
    end,
    Table = function(tbl)
      if tbl.identifier ~= "" then
        if not kind_of(tbl.identifier) then fail(file, tbl.identifier, "table ids must start with tbl-") end
        label(tbl.identifier, file)
      end
    end,
    Image = function(img) check_image(img, file) end,
    Cite = function(cite)
      for _, c in ipairs(cite.citations) do
        if not kind_of(c.id) then
          fail(file, "@" .. c.id, "@" .. c.id .. " is a citation; only @fig-... and @tbl-... references are supported "
            .. "(write \\@ for a literal @)")
        end
        table.insert(references, { id = c.id, where = where(file, "@" .. c.id) })
      end
    end,
  }
end

local stack = {}

-- The blocks of one file: includes spliced in, variables resolved, the subset checked.
local function blocks_of(file, text, main)
  for _, f in ipairs(stack) do
    if f == file then
      local chain = {}
      for _, g in ipairs(stack) do table.insert(chain, pandoc.path.filename(g)) end
      table.insert(chain, pandoc.path.filename(file))
      fail(stack[#stack], pandoc.path.filename(file), "include cycle (" .. table.concat(chain, " -> ") .. ")")
    end
  end
  sources[file] = text
  local doc = pandoc.read(text, FROM)
  for key in pairs(doc.meta) do
    if not main then fail(file, "---", "included files may not have YAML front matter; move it to the main document") end
    if not FRONT_MATTER[key] then
      fail(file, key .. ":", "front matter key " .. key .. " is not supported (only title, subtitle, author, date, "
        .. "abstract); put format options in _quarto.yml")
    end
  end
  table.insert(stack, file)
  local out = pandoc.Blocks({})
  for _, block in ipairs(doc.blocks) do
    local target = block.t == "Para" and pandoc.utils.stringify(block):match("^{{<%s*include%s+(%S+)%s*>}}$")
    if target then
      local path = pandoc.path.join({ project, (target:gsub("[\"']", "")) })
      local fh = io.open(path, "rb") or fail(file, target, "included file " .. path .. " does not exist; "
        .. "paths are relative to the project " .. project)
      out:extend(blocks_of(path, fh:read("a"), false))
      fh:close()
    else
      local walked = pandoc.Blocks({ block }):walk({ Inlines = shortcodes(file) }):walk(checks(file))
      out:extend(walked)
    end
  end
  table.remove(stack)
  return out
end

local function number_caption(caption, id)
  local text = PREFIX[kind_of(id)] .. " " .. numbers[id]
  if pandoc.utils.stringify(caption.long) == "" then
    caption.long = pandoc.Blocks({ pandoc.Plain(pandoc.Inlines(text)) })
  elseif caption.long[1].t == "Plain" or caption.long[1].t == "Para" then
    caption.long[1].content = pandoc.Inlines(text .. ": ") .. caption.long[1].content
  else
    caption.long:insert(1, pandoc.Plain(pandoc.Inlines(text .. ": ")))
  end
  return caption
end

local function numbered(el)
  if kind_of(el.identifier) then
    el.caption = number_caption(el.caption, el.identifier)
    return el
  end
end

local function reference(cite)
  local c = cite.citations[1]
  if #cite.citations ~= 1 or #c.prefix > 0 or #c.suffix > 0 then
    error("only one reference per citation, without prefix or suffix, is supported: " .. pandoc.utils.stringify(cite), 0)
  end
  local text = c.mode == "SuppressAuthor" and tostring(numbers[c.id]) or PREFIX[kind_of(c.id)] .. " " .. numbers[c.id]
  return pandoc.Link(pandoc.Inlines(text), "#" .. c.id, "", pandoc.Attr("", { "quarto-xref" }))
end

-- Typst reads "..." as an ellipsis shorthand; keep literal dots literal.
local function typst_dots(str)
  if not str.text:find("...", 1, true) then return nil end
  local out = pandoc.Inlines({})
  for piece, dots in str.text:gmatch("([^%.]*)(%.*)") do
    if piece ~= "" then out:insert(pandoc.Str(piece)) end
    if #dots >= 3 then
      out:insert(pandoc.RawInline("typst", string.rep("\\.", #dots)))
    elseif dots ~= "" then
      out:insert(pandoc.Str(dots))
    end
  end
  return out
end

local function typst_image(img)
  if not img.src:match("^%a[%w+.-]*:") and not pandoc.path.is_absolute(img.src) then
    img.src = pandoc.path.join({ "..", img.src })
  end
  return img
end

function Pandoc(doc)
  local main = PANDOC_STATE.input_files[1]
  project, meta = pandoc.path.directory(main), doc.meta
  local fh = io.open(main, "rb")
  doc.blocks = blocks_of(main, fh:read("a"), true)
  fh:close()
  doc.meta = pandoc.Pandoc({}, doc.meta):walk({ Inlines = shortcodes(main) }).meta
  for _, ref in ipairs(references) do
    if not labels[ref.id] then
      local kind = kind_of(ref.id) == "fig" and "figure" or "table"
      error(ref.where .. ": unknown reference @" .. ref.id .. ": no " .. kind .. " has the label #" .. ref.id, 0)
    end
  end
  local count = { fig = 0, tbl = 0 }
  local function number(el)
    local kind = kind_of(el.identifier)
    if kind then
      count[kind] = count[kind] + 1
      numbers[el.identifier] = count[kind]
    end
  end
  doc.blocks:walk({ Figure = number, Table = number })
  if not doc.meta.title then doc.meta.pagetitle = pandoc.path.filename(project) end
  local filter = { Figure = numbered, Table = numbered, Cite = reference }
  if FORMAT:match("typst") then filter.Image = typst_image end
  doc = doc:walk(filter)
  if FORMAT:match("typst") then doc = doc:walk({ Str = typst_dots }) end -- walks the metadata too
  return doc
end
