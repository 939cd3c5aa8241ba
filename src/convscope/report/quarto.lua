--[[
quarto.lua: the subset of Quarto the report uses, as one pandoc Lua filter (convscope.report.render runs it).

* {{< include path >}} (a paragraph of its own; paths relative to the project) splices the file's blocks in.
* {{< var a.b >}}: the value of a.b in the metadata (render.py passes _variables.yml as a metadata file).
* Figures #fig-* and tables #tbl-* are numbered in document order as Quarto does ("Figure 1: caption");
  @fig-x reads "Figure 1" and links to it (-@fig-x reads "1").
* Anything else outside plain Markdown (CHECKS, other shortcodes, citations, front matter in included files, include
  cycles) stops pandoc with one line "file:line: what", the line being the first of the file that holds the
  construct's text (pandoc's Markdown reader keeps no source positions).
--]]

-- Included files are read as pandoc read the main document (render.py's "from").
local FROM = { format = "markdown", extensions = PANDOC_READER_OPTIONS.extensions }
local FRONT_MATTER = { title = true, subtitle = true, author = true, date = true, abstract = true }
local PREFIX = { fig = "Figure", tbl = "Table" }
local HEADING_CLASSES = { unnumbered = true, appendix = true }

local project, meta
local sources = {} -- file -> its text, for line numbers
local stack = pandoc.List() -- the files being read, the main document first; errors name the last one
local labels = {} -- id -> "file:line" of its definition
local numbers = {} -- id -> its figure or table number
local cited = {} -- id -> "file:line" of its first reference
local count = { fig = 0, tbl = 0 }

local function kind_of(id)
  return id:match("^(fig)%-") or id:match("^(tbl)%-")
end

-- "file:line" of the first line (from line `from` on) holding needle in the file being read, else its line 1.
local function where(needle, from)
  local file, n = stack[#stack] or PANDOC_STATE.input_files[1], 0
  for line in (sources[file] .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if n >= (from or 1) and line:find(needle, 1, true) then return file .. ":" .. n, n end
  end
  return file .. ":1", 1
end

local function fail(needle, message, from)
  error(where(needle, from) .. ": " .. message, 0)
end

local function variable(key)
  local node = meta
  for part in key:gmatch("[^.]+") do
    if type(node) ~= "table" or rawget(node, part) == nil then
      fail(key, "unknown variable {{< var " .. key .. " >}}; define " .. key .. " in _variables.yml")
    end
    node = rawget(node, part)
  end
  local kind = pandoc.utils.type(node)
  if kind == "Inlines" or kind == "string" or kind == "boolean" then
    return pandoc.Inlines(kind == "Inlines" and node:clone() or tostring(node))
  end
  fail(key, "variable " .. key .. " is a " .. kind .. ", not one line of text; point {{< var >}} at a single value")
end

-- Replaces {{< var ... >}} in a list of inlines; any other shortcode is an error.
local function shortcodes(inlines)
  local out, open = pandoc.Inlines({}), nil -- open: the text of a shortcode not yet closed
  for _, el in ipairs(inlines) do
    if not open and not (el.t == "Str" and el.text:find("{{<", 1, true)) then
      out:insert(el)
    else
      local text, done = (open or "") .. pandoc.utils.stringify(el), 1
      for start, name, arg, stop in text:gmatch("(){{<%s*(%S*)%s*(.-)%s*>}}()") do
        if name == "include" then
          fail(arg, "{{< include " .. arg .. " >}} must be a paragraph of its own (blank lines around it)")
        elseif name ~= "var" then
          fail(name, "unsupported shortcode {{< " .. name .. " ... >}}; the fallback renderer knows include and var")
        end
        out:insert(pandoc.Str(text:sub(done, start - 1)))
        out:extend(variable(arg))
        done = stop
      end
      open = text:match("{{<.*", done)
      out:insert(pandoc.Str(text:sub(done, #text - #(open or ""))))
    end
  end
  if open then fail("{{<", "shortcode {{< is never closed with >}}") end
  return out
end

-- Registers a figure's or table's label (each is used once); #fig- and #tbl- ones are numbered in reading order,
-- which is document order, their caption starting "Figure 1: ".
local function label(el)
  local id, kind, caption = el.identifier, kind_of(el.identifier), el.caption
  if id == "" then return nil end
  local at, line = where("#" .. id)
  if labels[id] then
    local from = labels[id] == at and line + 1 or 1 -- the second use in the file where the first one is
    fail("#" .. id, "label #" .. id .. " is already used at " .. labels[id] .. "; labels must be unique", from)
  end
  labels[id] = at
  if not kind then return nil end
  count[kind] = count[kind] + 1
  numbers[id] = count[kind]
  local first = caption.long[1] or pandoc.Plain({}) -- captions are one Plain, or none
  first.content = pandoc.Inlines(PREFIX[kind] .. " " .. count[kind] .. (#first.content > 0 and ": " or ""))
    .. first.content
  caption.long[1] = first
  el.caption = caption
  return el
end

local function raw(el)
  if el.format == "html" and el.text:match("^<!%-%-.*%-%->%s*$") then return {} end -- invisible, as in Quarto
  local first = el.text:match("[^\n]*")
  fail(first, "raw " .. el.format:upper() .. " " .. first .. " is not supported; use Markdown (a literal < is \\<)")
end

-- The subset check, a filter on the blocks of the file being read: what is outside the subset stops the render.
local CHECKS = {
  Div = function() fail(":::", "fenced divs and callouts (':::') are not supported; use plain Markdown") end,
  Span = function() fail("]{", "bracketed spans ([text]{...}) are not supported; use plain Markdown") end,
  RawInline = raw,
  RawBlock = raw,
  Code = function(code)
    local cell = code.text:match("^{[%w_]+[^}]*}")
    if cell then fail(cell, "code block " .. cell .. ": executable cells are not supported; write ```text instead") end
  end,
  CodeBlock = function(block)
    if block.text:match("^#|") then fail("#|", "cell options '#|': executable cells are not supported") end
  end,
  Header = function(h)
    if h.level > 4 then fail(pandoc.utils.stringify(h), "heading level " .. h.level .. " is too deep (# to ####)") end
    for _, class in ipairs(h.classes) do
      if not HEADING_CLASSES[class] then
        fail("." .. class, "heading class ." .. class .. " is not supported; use {.unnumbered} or {.appendix}")
      end
    end
  end,
  Image = function(img)
    local path = pandoc.path.join({ project, img.src })
    if img.src:match("^%a[%w+.-]*:") or pandoc.path.is_absolute(img.src) then
      fail(img.src, "image " .. img.src .. " must be a file path relative to the project (no URLs, no absolute paths)")
    elseif not pcall(pandoc.system.read_file, path) then
      fail(img.src, "image " .. path .. " does not exist; paths are relative to " .. project)
    elseif img.identifier:match("^fig%-") then
      fail("#" .. img.identifier, "figure #" .. img.identifier .. " must be a paragraph of its own")
    end
    for key in pairs(img.attributes) do
      if key ~= "width" and key ~= "height" then
        fail(img.src, "image attribute " .. key .. " is not supported; use {#fig-name width=80%}")
      end
    end
  end,
  Figure = label, -- pandoc moved the image's id there
  Table = function(tbl)
    if tbl.identifier ~= "" and not kind_of(tbl.identifier) then fail(tbl.identifier, "table ids start with tbl-") end
    return label(tbl)
  end,
  Cite = function(cite)
    local c = cite.citations[1]
    if not kind_of(c.id) then
      fail("@" .. c.id, "@" .. c.id .. " is a citation; only @fig-... and @tbl-... references are supported "
        .. "(write \\@ for a literal @)")
    elseif #cite.citations > 1 or #c.prefix > 0 or #c.suffix > 0 then
      fail("@" .. c.id, "only one reference per citation, without prefix or suffix, is supported")
    end
    cited[c.id] = cited[c.id] or where("@" .. c.id)
  end,
}

-- The blocks of a file: includes spliced in, variables resolved, comments dropped, the subset checked.
local function blocks_of(file)
  if stack:includes(file) then
    local chain = (stack .. { file }):map(pandoc.path.filename)
    fail(pandoc.path.filename(file), "include cycle (" .. table.concat(chain, " -> ") .. ")")
  end
  local ok, text = pcall(pandoc.system.read_file, file)
  if not ok then
    fail(pandoc.path.filename(file), "included file " .. file .. " does not exist; paths are relative to " .. project)
  end
  stack:insert(file)
  sources[file] = text
  local doc = pandoc.read(text, FROM)
  for key in pairs(doc.meta) do
    if #stack > 1 then fail("---", "included files may not have YAML front matter; move it to the main document") end
    if not FRONT_MATTER[key] then
      fail(key .. ":", "front matter key " .. key .. " is not supported (only title, subtitle, author, date, "
        .. "abstract); put format options in _quarto.yml")
    end
  end
  local out = pandoc.Blocks({})
  for _, block in ipairs(doc.blocks) do
    local target = block.t == "Para" and pandoc.utils.stringify(block):match("^{{<%s*include%s+(%S+)%s*>}}$")
    if target then
      out:extend(blocks_of(pandoc.path.join({ project, target })))
    else
      out:extend(pandoc.Blocks({ block }):walk({ Inlines = shortcodes }):walk(CHECKS))
    end
  end
  stack:remove()
  return out
end

local function reference(cite)
  local c = cite.citations[1]
  if not numbers[c.id] then
    error(cited[c.id] .. ": unknown reference @" .. c.id .. ": no figure or table has the label #" .. c.id, 0)
  end
  local text = c.mode == "SuppressAuthor" and tostring(numbers[c.id]) or PREFIX[kind_of(c.id)] .. " " .. numbers[c.id]
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
  project, meta = pandoc.path.directory(PANDOC_STATE.input_files[1]), doc.meta
  doc.blocks = blocks_of(PANDOC_STATE.input_files[1])
  doc.meta = pandoc.Pandoc({}, doc.meta):walk({ Inlines = shortcodes }).meta -- errors name the main document
  if not doc.meta.title then doc.meta.pagetitle = pandoc.path.filename(project) end
  doc = doc:walk({ Cite = reference })
  return FORMAT:match("typst") and doc:walk(TYPST) or doc
end
