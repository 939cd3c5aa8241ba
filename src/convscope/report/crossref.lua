--[[
crossref.lua: Quarto-style figure and table cross-references for plain pandoc.

Used by convscope.report.render (the fallback renderer when Quarto is not on
PATH). It does what Quarto's crossref filter does for the subset we support:

* figures whose identifier starts with "fig-" are numbered 1, 2, ... in
  document order and their caption becomes "Figure N: caption";
* tables whose identifier starts with "tbl-" are numbered likewise and their
  caption becomes "Table N: caption";
* a citation @fig-x / @tbl-x becomes a link to #fig-x reading "Figure N" /
  "Table N" (-@fig-x reads just "N"), so no citation is left for the writer
  (Typst would otherwise stop with "the document does not contain a
  bibliography").

Numbers are computed here, for every output format, so HTML and PDF show the
same numbers; the Typst preamble (typst-header.typ) turns Typst's own figure
numbering off so numbers are not doubled.

For Typst output, image paths (relative to the project directory, pandoc's
working directory) are made relative to a direct subfolder of the project
directory, where render.py writes the .typ file.

Any reference it cannot resolve is an error: pandoc exits non-zero.
--]]

local PREFIX = { fig = "Figure", tbl = "Table" }
local numbers = {}   -- identifier -> number

local function kind_of(id)
  return id:match("^(fig)%-") or id:match("^(tbl)%-")
end

local function fail(msg)
  error("crossref: " .. msg, 0)
end

local function register(id)
  if numbers[id] then
    fail("duplicate label #" .. id)
  end
end

local function collect(doc)
  local count = { fig = 0, tbl = 0 }
  doc.blocks:walk({
    traverse = "topdown",
    Figure = function(fig)
      if kind_of(fig.identifier) == "fig" then
        register(fig.identifier)
        count.fig = count.fig + 1
        numbers[fig.identifier] = count.fig
      end
    end,
    Table = function(tbl)
      if kind_of(tbl.identifier) == "tbl" then
        register(tbl.identifier)
        count.tbl = count.tbl + 1
        numbers[tbl.identifier] = count.tbl
      end
    end,
  })
end

-- Prefix "Figure N: " / "Table N: " to a caption (pandoc Caption object).
local function number_caption(caption, id)
  local label = PREFIX[kind_of(id)] .. " " .. numbers[id]
  local long = caption.long
  if pandoc.utils.stringify(long) == "" then
    caption.long = pandoc.Blocks({ pandoc.Plain(pandoc.Inlines(label)) })
    return caption
  end
  local prefix = pandoc.Inlines(label .. ": ")
  if long[1].t == "Plain" or long[1].t == "Para" then
    long[1].content = prefix .. long[1].content
  else
    long:insert(1, pandoc.Plain(prefix))
  end
  caption.long = long
  return caption
end

local function reference(cite)
  if #cite.citations ~= 1 then
    fail("only one reference per citation is supported, got " .. pandoc.utils.stringify(cite.content))
  end
  local c = cite.citations[1]
  local id = c.id
  local kind = kind_of(id)
  if not kind then
    fail("@" .. id .. " is a citation; only @fig-... and @tbl-... references are supported (write \\@ for a literal @)")
  end
  if not numbers[id] then
    fail("unknown reference @" .. id .. ": no figure or table has the label #" .. id)
  end
  if #c.prefix > 0 or #c.suffix > 0 then
    fail("prefix/suffix text in [@" .. id .. "] is not supported")
  end
  local text
  if c.mode == "SuppressAuthor" then
    text = tostring(numbers[id])
  else
    text = PREFIX[kind] .. " " .. numbers[id]
  end
  return pandoc.Link(pandoc.Inlines(text), "#" .. id, "", pandoc.Attr("", { "quarto-xref" }))
end

-- Typst reads "..." as an ellipsis shorthand; keep literal dots literal.
local function typst_dots(str)
  if not str.text:find("%.%.%.") then
    return nil
  end
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
  local src = img.src
  if not src:match("^%a[%w+.-]*:") and not pandoc.path.is_absolute(src) then
    img.src = pandoc.path.join({ "..", src })
  end
  return img
end

function Pandoc(doc)
  collect(doc)
  local filter = {
    Figure = function(fig)
      if numbers[fig.identifier] then
        fig.caption = number_caption(fig.caption, fig.identifier)
        return fig
      end
    end,
    Table = function(tbl)
      if numbers[tbl.identifier] then
        tbl.caption = number_caption(tbl.caption, tbl.identifier)
        return tbl
      end
    end,
    Cite = reference,
  }
  if FORMAT:match("typst") then
    filter.Image = typst_image
  end
  doc = doc:walk(filter)
  if FORMAT:match("typst") then
    doc = doc:walk({ Str = typst_dots })  -- walks the metadata too
  end
  return doc
end
