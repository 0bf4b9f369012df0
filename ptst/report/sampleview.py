"""The per-sample viewer of report.html: inline CSS and JavaScript (no CDN, no server) over `samples.js`.

`window.PTST_SAMPLES` (see `ptst.report.samples`): `judges` (names, primary first), `cells` (one object per evaluated
cell with its `label`), `benchmarks`, `strings` (every text once) and `rows`, each
`[cell, benchmark, category, index, query, prompt, response, reference, verdicts]` where texts are indexes into
`strings` (-1: none) and `verdicts` is null for task items, else one `[unsafe 1/0/null, score, raw reply]` or null
per judge.

The viewer filters by cell, train and test template, benchmark, category and verdict, searches the query, prompt and
response, and renders one page of results at a time (so 20,000 rows cost a filter pass, not 20,000 DOM nodes). Every
text goes through `textContent`, never `innerHTML`. The filter state lives in the URL fragment (`#samples?cell=3`),
so a filtered view can be bookmarked or opened directly.
"""

from __future__ import annotations

from ptst.report.samples import SAMPLES_FILE

VIEW_CSS = """
#samples .filters{display:flex;flex-wrap:wrap;gap:.4em 1em;align-items:end;margin:.5em 0}
#samples label{display:flex;flex-direction:column;font-size:.85em;color:#444}
#samples select,#samples input{font:inherit;font-size:.95em;max-width:22em}
#samples input[type=search]{width:18em}
.sample{border:1px solid #ccc;border-radius:4px;margin:.6em 0;padding:.4em .7em}
.sample .head{font-size:.85em;color:#444;display:flex;flex-wrap:wrap;gap:.3em 1em}
.sample .cols{display:grid;grid-template-columns:1fr 1fr;gap:.6em}
@media (max-width:900px){.sample .cols{grid-template-columns:1fr}}
.sample pre{white-space:pre-wrap;word-break:break-word;max-height:16em;overflow:auto;margin:.2em 0}
.sample h4{margin:.3em 0 0;font-size:.8em;color:#555;font-weight:600}
.verdict{display:inline-block;padding:0 .4em;border-radius:3px;font-size:.85em;margin-right:.4em;border:1px solid}
.verdict.unsafe{background:#fde0c5;border-color:#b35806}
.verdict.safe{background:#e0ecf4;border-color:#2166ac}
.verdict.unscored{background:#eee;border-color:#888}
.pager{display:flex;gap:.6em;align-items:center;margin:.4em 0}
"""

VIEW_HTML = """
<h2 id="samples-heading">Samples</h2>
<div id="samples">
<p class="note">Every prompt as rendered for the model, its response and each judge's verdict. The data is read
from <code>{file}</code> beside this page (no server needed); filters and search apply to all samples, and one page is
shown at a time.</p>
<noscript><p>The sample viewer needs JavaScript; the same data is in <code>{file}</code>.</p></noscript>
<div class="filters">
<label>cell<select data-f="cell"></select></label>
<label>train template<select data-f="train"></select></label>
<label>test template<select data-f="test"></select></label>
<label>benchmark<select data-f="bench"></select></label>
<label>category<select data-f="cat"></select></label>
<label>verdict<select data-f="verdict"></select></label>
<label>search<input type="search" data-f="q" placeholder="query, prompt or response"></label>
</div>
<div class="pager"><button data-p="-1">&larr; previous</button><span class="count"></span>
<button data-p="1">next &rarr;</button></div>
<div class="list"></div>
<div class="pager"><button data-p="-1">&larr; previous</button><button data-p="1">next &rarr;</button></div>
</div>
""".replace("{file}", SAMPLES_FILE)

VIEW_JS = r"""
(function(){
"use strict";
var root=document.getElementById("samples"), D=window.PTST_SAMPLES, PAGE=25;
if(!root)return;
var list=root.querySelector(".list"), count=root.querySelector(".count");
if(!D){count.textContent="No sample data: samples.js was not found beside this page.";return;}
var S=D.strings, J=D.judges, C=D.cells, R=D.rows, lower=null;
function el(tag,cls,text){var e=document.createElement(tag);if(cls)e.className=cls;if(text!=null)e.textContent=text;return e;}
function str(i){return i<0?null:S[i];}
function uniq(a){var seen={},out=[];a.forEach(function(x){var k=x==null?"":String(x);if(!(k in seen)){seen[k]=1;out.push(x);}});return out;}
function verdictName(v){return v==null?"not judged":v[0]==null?"unscored":v[0]?"unsafe":"safe";}
var opts={
 cell:C.map(function(c,i){return [String(i),c.label];}),
 train:uniq(C.map(function(c){return c.train_template||"base";})).map(function(t){return [t,t];}),
 test:uniq(C.map(function(c){return c.test_template;})).map(function(t){return [t,t];}),
 bench:D.benchmarks.map(function(b,i){return [String(i),b];}),
 cat:uniq(R.map(function(r){return r[2];})).filter(function(c){return c!=null;}).map(function(c){return [c,c];}),
 verdict:[]
};
J.forEach(function(j,k){["unsafe","safe","unscored","not judged"].forEach(function(v){opts.verdict.push([k+":"+v,j+": "+v]);});});
if(J.length>1)opts.verdict.push(["disagree","judges disagree"]);
var state={cell:"",train:"",test:"",bench:"",cat:"",verdict:"",q:""}, page=0, hits=[];
var opened=location.hash.indexOf("#samples")===0;
function readHash(){
 var h=location.hash, i=h.indexOf("?");
 if(h.indexOf("#samples")!==0||i<0)return;
 h.slice(i+1).split("&").forEach(function(kv){var p=kv.split("=");if(p[0] in state)state[p[0]]=decodeURIComponent(p[1]||"");});
}
function writeHash(){
 var parts=[];for(var k in state)if(state[k])parts.push(k+"="+encodeURIComponent(state[k]));
 history.replaceState(null,"","#samples"+(parts.length?"?"+parts.join("&"):""));
}
readHash();
root.querySelectorAll("select").forEach(function(sel){
 var f=sel.getAttribute("data-f");
 sel.appendChild(el("option",null,"all")).value="";
 opts[f].forEach(function(o){var e=el("option",null,o[1]);e.value=o[0];sel.appendChild(e);});
 sel.value=state[f];
 sel.addEventListener("change",function(){state[f]=sel.value;page=0;update();});
});
var input=root.querySelector("input[data-f=q]"), timer=null;
input.value=state.q;
input.addEventListener("input",function(){clearTimeout(timer);timer=setTimeout(function(){state.q=input.value;page=0;update();},200);});
root.querySelectorAll("button[data-p]").forEach(function(b){
 b.addEventListener("click",function(){page+=+b.getAttribute("data-p");show();});
});
function keep(r){
 var c=C[r[0]];
 if(state.cell!==""&&String(r[0])!==state.cell)return false;
 if(state.train!==""&&(c.train_template||"base")!==state.train)return false;
 if(state.test!==""&&c.test_template!==state.test)return false;
 if(state.bench!==""&&String(r[1])!==state.bench)return false;
 if(state.cat!==""&&r[2]!==state.cat)return false;
 if(state.verdict!==""){
  if(!r[8])return false;
  if(state.verdict==="disagree"){
   var seen=uniq(r[8].map(function(v){return v&&v[0];}).filter(function(u){return u!=null;}));
   if(seen.length<2)return false;
  }else{
   var p=state.verdict.split(":");if(verdictName(r[8][+p[0]])!==p[1])return false;
  }
 }
 if(state.q){
  if(!lower)lower=S.map(function(s){return s.toLowerCase();});
  var q=state.q.toLowerCase();
  if(!((r[4]>=0&&lower[r[4]].indexOf(q)>=0)||(r[5]>=0&&lower[r[5]].indexOf(q)>=0)||(r[6]>=0&&lower[r[6]].indexOf(q)>=0)))return false;
 }
 return true;
}
function card(r){
 var c=C[r[0]], d=el("div","sample"), head=el("div","head");
 head.appendChild(el("strong",null,c.label));
 head.appendChild(el("span",null,D.benchmarks[r[1]]+(r[2]!=null?" · "+r[2]:"")+" · item "+r[3]));
 head.appendChild(el("span",null,c.base_model));
 d.appendChild(head);
 if(r[8]){
  var v=el("div");
  r[8].forEach(function(x,k){
   var name=verdictName(x), b=el("span","verdict "+name.replace(" ",""),J[k]+": "+name+(x&&x[1]!=null?" (score "+x[1]+")":""));
   if(x&&x[2]>=0)b.title=S[x[2]];
   v.appendChild(b);
  });
  d.appendChild(v);
 }
 var cols=el("div","cols"), left=el("div"), right=el("div");
 left.appendChild(el("h4",null,"prompt as rendered"));
 left.appendChild(el("pre",null,r[5]>=0?S[r[5]]:"(not generated yet) "+S[r[4]]));
 right.appendChild(el("h4",null,"response"));
 right.appendChild(el("pre",null,r[6]>=0?S[r[6]]:"(no response yet)"));
 if(r[7]>=0){right.appendChild(el("h4",null,"reference"));right.appendChild(el("pre",null,S[r[7]]));}
 cols.appendChild(left);cols.appendChild(right);d.appendChild(cols);
 return d;
}
function show(){
 var pages=Math.max(1,Math.ceil(hits.length/PAGE));
 page=Math.min(Math.max(page,0),pages-1);
 var frag=document.createDocumentFragment();
 hits.slice(page*PAGE,(page+1)*PAGE).forEach(function(i){frag.appendChild(card(R[i]));});
 list.textContent="";list.appendChild(frag);
 count.textContent=hits.length+" of "+R.length+" samples · page "+(page+1)+" of "+pages;
 root.querySelectorAll("button[data-p=\"-1\"]").forEach(function(b){b.disabled=page===0;});
 root.querySelectorAll("button[data-p=\"1\"]").forEach(function(b){b.disabled=page>=pages-1;});
}
function update(first){
 hits=[];for(var i=0;i<R.length;i++)if(keep(R[i]))hits.push(i);
 if(!first)writeHash();
 show();
}
update(true);
root.setAttribute("data-ready-ms",String(Math.round(performance.now())));
if(opened)document.getElementById("samples-heading").scrollIntoView();
})();
"""


def sample_section() -> str:
    """The viewer's markup and scripts, placed last in report.html (its CSS goes into the page's style element)."""
    return (f"{VIEW_HTML}\n<script src=\"{SAMPLES_FILE}\"></script>\n<script>{VIEW_JS}</script>")
