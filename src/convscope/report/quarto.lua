--[[
quarto.lua: the subset of Quarto the report uses, as one pandoc Lua filter (convscope.report.render runs it).

* {{< include path >}} (a paragraph of its own): the file is read with pandoc.read and its blocks spliced in;
  includes nest, cycles are errors. Paths are relative to the project (the main document's folder).
* {{< var a.b >}}: the value of a.b in the metadata (render.py passes _variables.yml as a metadata file).
* Anything outside the subset (CHECKS below, other shortcodes, front matter in included files) stops pandoc with
  one line "file:line: what". Pandoc's Markdown reader has no source positions, so the line is the first one of
  the file holding the construct's text.
* Figures #fig-* and tables #tbl-* are numbered in document order as Quarto does ("Figure 1: caption");
  @fig-x reads "Figure 1" and links to it (-@fig-x reads "1"); any other citation is an error.
* Typst output: image paths are made relative to a direct subfolder of the project (where render.py writes
  the .typ file), and "..." stays three dots.
--]]

-- Included files are read as pandoc read the main document (render.py's "from").
local FROM = { format = "markdown", extensions = PANDOC_READER_OPTIONS.extensions }
local FRONT_MATTER = { title = true, subtitle = true, author = true, date = true, abstract = true }
local PREFIX = { fig = "Figure", tbl = "Table" }
local HEADING_CLASSES = { unnumbered = true, appendix = true }

local project, meta
local sources = {} -- file -> its text, for line numbers
local labels = {} -- id -> { file, line, where = "file:line", number = its figure or table number }
local cited = {} -- id -> "file:line" of its first reference
local count = { fig = 0, tbl = 0 }
local stack = {} -- the files being read, the main document first

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

local function fail(file, needle, message, from)
  error(where(file, needle, from) .. ": " .. message, 0)
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
  if kind == "Inlines" then
    return node:clone()
  elseif kind == "string" or kind == "boolean" then
    return pandoc.Inlines(tostring(node))
  end
  fail(file, key, "variable " .. key .. " is a " .. kind .. ", not one line of text; point {{< var >}} at a single value")
end

-- Replaces {{< var ... >}} in a list of inlines; any other shortcode is an error.
local function shortcodes(file)
  return function(inlines)
    local out, open = pandoc.Inlines({}), nil -- open: the text of a shortcode not yet closed
    local function expand(text) -- text from a Str on: shortcodes expanded, the rest kept; returns what is open
      local start = text:find("{{<", 1, true)
      local close = start and text:find(">}}", start, true)
      if start ~= 1 then out:insert(pandoc.Str(text:sub(1, (start or 0) - 1))) end
      if not close then return start and text:sub(start) end
      local name, arg = text:sub(start, close + 2):match("^{{<%s*(%S*)%s*(.-)%s*>}}$")
      if name == "var" then
        out:extend(variable(arg, file))
      elseif name == "include" then
        fail(file, arg, "{{< include " .. arg .. " >}} must be a paragraph of its own (blank lines around it)")
      else
        fail(file, name, "unsupported shortcode {{< " .. name .. " ... >}}; the fallback renderer knows include and var")
      end
      return close + 2 < #text and expand(text:sub(close + 3)) or nil
    end
    for _, el in ipairs(inlines) do
      if open then
        open = expand(open .. pandoc.utils.stringify(el))
      elseif el.t == "Str" and el.text:find("{{<", 1, true) then
        open = expand(el.text)
      else
        out:insert(el)
      end
    end
    if open then fail(file, "{{<", "shortcode {{< is never closed with >}}") end
    return out
  end
end

-- Registers a label (each is used once) and numbers #fig- and #tbl- ones: files are read in document order.
local function label(id, file)
  local first = labels[id]
  if first then
    local from = first.file == file and first.line + 1 or 1
    return "#" .. id, "label #" .. id .. " is already used at " .. first.where .. "; labels must be unique", from
  end
  local at, line = where(file, "#" .. id)
  local kind = kind_of(id)
  if kind then count[kind] = count[kind] + 1 end
  labels[id] = { file = file, line = line, where = at, number = kind and count[kind] }
end

local function comment(raw)
  return raw.format == "html" and raw.text:match("^<!%-%-.*%-%->%s*$")
end

-- The subset check, by element type: for an element outside the subset, the text that finds it in its file and
-- the error (nothing when it is fine).
local CHECKS = {
  Div = function() return ":::", "fenced divs and callouts (':::') are not supported; use plain Markdown" end,
  Span = function() return "]{", "bracketed spans ([text]{...}) are not supported; use plain Markdown" end,
  RawInline = function(raw)
    return raw.text, "raw " .. raw.format:upper() .. " " .. raw.text .. " is not supported (escape a literal < as \\<)"
  end,
  RawBlock = function(raw)
    return raw.text:match("[^\n]*"), "raw " .. raw.format:upper() .. " is not supported; use Markdown"
  end,
  Code = function(code)
    local cell = code.text:match("^{[%w_]+[^}]*}")
    if cell then
      return cell, "code block " .. cell .. ": executable cells are not supported; write ```text (or another language)"
    end
  end,
  CodeBlock = function(block)
    if block.text:match("^#|") then return "#|", "cell options '#|': executable cells are not supported" end
  end,
  Header = function(h)
    if h.level > 4 then return pandoc.utils.stringify(h), "heading level " .. h.level .. " is too deep; use # to ####" end
    for _, class in ipairs(h.classes) do
      if not HEADING_CLASSES[class] then
        return "." .. class, "heading class ." .. class .. " is not supported; use {.unnumbered} or {.appendix}"
      end
    end
  end,
  Image = function(img, file)
    local path = pandoc.path.join({ project, img.src })
    if img.src:match("^%a[%w+.-]*:") or pandoc.path.is_absolute(img.src) then
      return img.src, "image " .. img.src .. " must be a file path relative to the project (no URLs, no absolute paths)"
    elseif not pcall(pandoc.system.read_file, path) then
      return img.src, "image " .. path .. " does not exist; paths are relative to " .. project
    elseif img.identifier:match("^fig%-") then
      return "#" .. img.identifier, "figure #" .. img.identifier .. " must be a paragraph of its own (blank lines around)"
    end
    for key in pairs(img.attributes) do
      if key ~= "width" and key ~= "height" then
        return img.src, "image attribute " .. key .. " is not supported; use {#fig-name width=80%}"
      end
    end
  end,
  Figure = function(fig, file)
    if fig.identifier ~= "" then return label(fig.identifier, file) end -- pandoc moved it there from the image
  end,
  Table = function(tbl, file)
    if tbl.identifier ~= "" and not kind_of(tbl.identifier) then return tbl.identifier, "table ids must start with tbl-" end
    if tbl.identifier ~= "" then return label(tbl.identifier, file) end
  end,
  Cite = function(cite, file)
    local c = cite.citations[1]
    if not kind_of(c.id) then
      return "@" .. c.id, "@" .. c.id .. " is a citation; only @fig-... and @tbl-... references are supported "
        .. "(write \\@ for a literal @)"
    elseif #cite.citations > 1 or #c.prefix > 0 or #c.suffix > 0 then
      return "@" .. c.id, "only one reference per citation, without prefix or suffix, is supported"
    end
    cited[c.id] = cited[c.id] or where(file, "@" .. c.id)
  end,
}

local function checks(file)
  local filter = {}
  for t, check in pairs(CHECKS) do
    filter[t] = function(el)
      local needle, message, from = check(el, file)
      if needle then fail(file, needle, message, from) end
    end
  end
  return filter
end

-- The blocks of one file: includes spliced in, variables resolved, comments dropped, the subset checked.
local function blocks_of(file, text)
  for _, f in ipairs(stack) do
    if f == file then
      local chain = pandoc.List(stack):map(pandoc.path.filename) .. { pandoc.path.filename(file) }
      fail(stack[#stack], pandoc.path.filename(file), "include cycle (" .. table.concat(chain, " -> ") .. ")")
    end
  end
  sources[file] = text
  local doc = pandoc.read(text, FROM)
  for key in pairs(doc.meta) do
    if #stack > 0 then fail(file, "---", "included files may not have YAML front matter; move it to the main document") end
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
      local ok, included = pcall(pandoc.system.read_file, path)
      if not ok then fail(file, target, "included file " .. path .. " does not exist; paths are relative to " .. project) end
      out:extend(blocks_of(path, included))
    else
      local drop = function(raw) return comment(raw) and {} or nil end -- comments are invisible, as in Quarto
      local walked = pandoc.Blocks({ block }):walk({ Inlines = shortcodes(file), RawInline = drop, RawBlock = drop })
      out:extend(walked:walk(checks(file)))
    end
  end
  table.remove(stack)
  return out
end

local function numbered(el)
  local kind = kind_of(el.identifier)
  if not kind then return nil end
  local text, caption = PREFIX[kind] .. " " .. labels[el.identifier].number, el.caption
  if pandoc.utils.stringify(caption.long) == "" then
    caption.long = pandoc.Blocks({ pandoc.Plain(pandoc.Inlines(text)) })
  elseif caption.long[1].t == "Plain" or caption.long[1].t == "Para" then
    caption.long[1].content = pandoc.Inlines(text .. ": ") .. caption.long[1].content
  else
    caption.long:insert(1, pandoc.Plain(pandoc.Inlines(text .. ": ")))
  end
  el.caption = caption
  return el
end

local function reference(cite)
  local c = cite.citations[1]
  local target = labels[c.id]
  if not target then
    local kind = kind_of(c.id) == "fig" and "figure" or "table"
    error(cited[c.id] .. ": unknown reference @" .. c.id .. ": no " .. kind .. " has the label #" .. c.id, 0)
  end
  local text = c.mode == "SuppressAuthor" and tostring(target.number) or PREFIX[kind_of(c.id)] .. " " .. target.number
  return pandoc.Link(pandoc.Inlines(text), "#" .. c.id, "", pandoc.Attr("", { "quarto-xref" }))
end

local TYPST = {
  Image = function(img) -- relative to the project's subfolder that holds the .typ file
    img.src = pandoc.path.join({ "..", img.src })
    return img
  end,
  Str = function(str) -- Typst reads "..." as an ellipsis shorthand: literal dots stay literal
    if not str.text:find("...", 1, true) then return nil end
    local out = pandoc.Inlines({})
    for piece, dot in str.text:gmatch("([^.]*)(%.?)") do
      out:insert(pandoc.Str(piece))
      if dot ~= "" then out:insert(pandoc.RawInline("typst", "\\.")) end
    end
    return out
  end,
}

function Pandoc(doc)
  local main = PANDOC_STATE.input_files[1]
  project, meta = pandoc.path.directory(main), doc.meta
  doc.blocks = blocks_of(main, pandoc.system.read_file(main))
  doc.meta = pandoc.Pandoc({}, doc.meta):walk({ Inlines = shortcodes(main) }).meta
  if not doc.meta.title then doc.meta.pagetitle = pandoc.path.filename(project) end
  doc = doc:walk({ Figure = numbered, Table = numbered, Cite = reference })
  return FORMAT:match("typst") and doc:walk(TYPST) or doc
end
