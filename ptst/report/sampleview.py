"""The per-sample viewer of report.html: inline CSS and JavaScript (no CDN, no server) over `samples.js`.

`window.PTST_SAMPLES` (see `ptst.report.samples`): `judges` (names, primary first), `cells` (one object per evaluated
cell with its `label`), `benchmarks`, `strings` (every text once) and `rows`, each
`[cell, benchmark, category, index, query, prompt, response, reference, verdicts]` where texts are indexes into
`strings` (-1: none) and `verdicts` is null for task items, else one `[unsafe 1/0/null, score, raw reply]` or null
per judge.

Each cell also carries `mark`: "ptst" (trained without a safety prompt, tested with one), "diag" (same template) or
null, so the viewer can name the cells PTST is about.

The viewer filters by cell, train and test template, benchmark, category and verdict, searches the query, prompt and
response (hits highlighted), sorts by verdict, score or response length (by the judge the verdict filter names, else
the primary), and renders one page of results at a time (so 187,000 rows cost a filter pass, not 187,000 DOM nodes;
a page number can be typed). Its *compare* view answers PTST's own question: one prompt's responses and verdicts
side by side across cells (base model, same-template and PTST cells first; optionally those only), for one item
(`compare across cells` on a sample) or for every prompt a filter selects, a page of prompts at a time. Items are
paired across cells by (benchmark, item index). Every text goes through `textContent` and text nodes (a search hit
is a `<mark>` element around a text node), never `innerHTML`. The whole state lives in the URL fragment
(`#samples?cell=3&p=2`, `#samples?row=1234` for one sample, `#samples?view=compare&item=0:17` for one comparison),
so any view can be bookmarked or shared; following such a link within the page re-reads it (`hashchange`).
"""

from __future__ import annotations

from ptst.report.samples import SAMPLES_FILE

VIEW_CSS = """
#samples .filters{display:flex;flex-wrap:wrap;gap:.4em 1em;align-items:end;margin:.5em 0}
#samples label{display:flex;flex-direction:column;font-size:.85em;color:#444}
#samples label.inline{flex-direction:row;align-items:center;gap:.3em}
#samples select,#samples input{font:inherit;font-size:.95em;max-width:22em}
#samples input[type=search]{width:18em}
#samples input[type=number]{width:5em}
.sample{border:1px solid #ccc;border-radius:4px;margin:.6em 0;padding:.4em .7em}
.sample.target{border:2px solid #1b7837}
.sample .head{font-size:.85em;color:#444;display:flex;flex-wrap:wrap;gap:.3em 1em}
.sample .cols{display:grid;grid-template-columns:1fr 1fr;gap:.6em}
@media (max-width:900px){.sample .cols{grid-template-columns:1fr}}
.sample pre{white-space:pre-wrap;word-break:break-word;max-height:16em;overflow:auto;margin:.2em 0}
.sample h4{margin:.3em 0 0;font-size:.8em;color:#555;font-weight:600}
.compare .side{display:grid;grid-template-columns:repeat(auto-fit,minmax(15em,1fr));gap:.6em}
.compare .side>div{border-top:3px solid #ccc;padding-top:.2em;min-width:0}
.compare .side>div.ptst{border-top-color:#1b7837}
.compare .side>div.diag{border-top-color:#000}
.compare .side>div.base{border-top-color:#2166ac}
.compare details{font-size:.85em}
.mark{display:inline-block;padding:0 .35em;border-radius:3px;font-size:.8em;font-weight:600;margin-right:.3em}
.mark.ptst{background:#e6f5e6;border:1px dashed #1b7837}
.mark.diag{background:#fff;border:1px solid #000}
.mark.base{background:#e0ecf4;border:1px solid #2166ac}
mark{background:#ffe066;padding:0}
.verdict{display:inline-block;padding:0 .4em;border-radius:3px;font-size:.85em;margin-right:.4em;border:1px solid}
.verdict.unsafe{background:#fde0c5;border-color:#b35806}
.verdict.safe{background:#e0ecf4;border-color:#2166ac}
.verdict.unscored{background:#eee;border-color:#888}
.pager{display:flex;gap:.6em;align-items:center;margin:.4em 0}
.links{font-size:.85em;display:flex;gap:1em}
"""

VIEW_HTML = """
<h2 id="samples-heading">Samples</h2>
<div id="samples">
<p class="note">Every prompt as rendered for the model, its response and each judge's verdict. The data is read
from <code>{file}</code> beside this page (no server needed); filters and search apply to all samples, and one page is
shown at a time. <em>compare across cells</em> puts one prompt's responses side by side (the base model, the
same-template cells and the PTST cells first); the address bar holds the view, so it can be shared as a link.</p>
<noscript><p>The sample viewer needs JavaScript; the same data is in <code>{file}</code>.</p></noscript>
<div class="filters">
<label>view<select data-f="view"></select></label>
<label>cell<select data-f="cell"></select></label>
<label>train template<select data-f="train"></select></label>
<label>test template<select data-f="test"></select></label>
<label>benchmark<select data-f="bench"></select></label>
<label>category<select data-f="cat"></select></label>
<label>verdict<select data-f="verdict"></select></label>
<label>sort<select data-f="sort"></select></label>
<label>search<input type="search" data-f="q" placeholder="query, prompt or response"></label>
<label class="inline"><input type="checkbox" data-f="key"> compare: base, same-template and PTST cells only</label>
</div>
<div class="pager"><button data-p="-1">&larr; previous</button><span class="count"></span>
<button data-p="1">next &rarr;</button><label class="inline">page <input type="number" min="1" data-f="page"></label>
<a class="all" href="#samples">show all</a></div>
<div class="list"></div>
<div class="pager"><button data-p="-1">&larr; previous</button><button data-p="1">next &rarr;</button></div>
</div>
""".replace("{file}", SAMPLES_FILE)

VIEW_JS = r"""
(function(){
"use strict";
var T0=performance.now(), root=document.getElementById("samples"), D=window.PTST_SAMPLES, PAGE=25, PAGE_ITEMS=5;
if(!root)return;
var list=root.querySelector(".list"), count=root.querySelector(".count");
if(!D){count.textContent="No sample data: samples.js was not found beside this page.";return;}
var S=D.strings, J=D.judges, C=D.cells, R=D.rows, lower=null, items=null, lengths=null, renders=0;
function el(tag,cls,text){var e=document.createElement(tag);if(cls)e.className=cls;if(text!=null)e.textContent=text;return e;}
function uniq(a){var seen={},out=[];a.forEach(function(x){var k=x==null?"":String(x);if(!(k in seen)){seen[k]=1;out.push(x);}});return out;}
function verdictName(v){return v==null?"not judged":v[0]==null?"unscored":v[0]?"unsafe":"safe";}
function kind(c){return c.train_template==null?"base":c.mark||"";}
var KIND={base:"base model",ptst:"PTST",diag:"same template"}, ORDER={base:0,diag:1,ptst:2,"":3};
var opts={
 view:[["","samples"],["compare","compare across cells"]],
 cell:C.map(function(c,i){return [String(i),c.label];}),
 train:uniq(C.map(function(c){return c.train_template||"base";})).map(function(t){return [t,t];}),
 test:uniq(C.map(function(c){return c.test_template;})).map(function(t){return [t,t];}),
 bench:D.benchmarks.map(function(b,i){return [String(i),b];}),
 cat:uniq(R.map(function(r){return r[2];})).filter(function(c){return c!=null;}).map(function(c){return [c,c];}),
 verdict:[],
 sort:[["","dataset order"],["verdict","verdict (unsafe first)"],["score","score (highest first)"],
  ["length","response length (longest first)"],["short","response length (shortest first)"]]
};
J.forEach(function(j,k){["unsafe","safe","unscored","not judged"].forEach(function(v){opts.verdict.push([k+":"+v,j+": "+v]);});});
if(J.length>1)opts.verdict.push(["disagree","judges disagree"]);
var BLANK={view:"",cell:"",train:"",test:"",bench:"",cat:"",verdict:"",sort:"",q:"",key:"",item:"",row:"",p:""};
var state={}, page=0, hits=[], shown=[];
var opened=location.hash.indexOf("#samples")===0, touched=opened;  // the address changes only once the viewer is used
function readHash(){
 for(var k in BLANK)state[k]=BLANK[k];
 var h=location.hash, i=h.indexOf("?");
 if(h.indexOf("#samples")===0&&i>=0)
  h.slice(i+1).split("&").forEach(function(kv){var p=kv.split("=");if(p[0] in state)state[p[0]]=decodeURIComponent(p[1]||"");});
 page=Math.max(0,(parseInt(state.p,10)||1)-1);
}
function query(st){
 var parts=[];for(var k in st)if(st[k])parts.push(k+"="+encodeURIComponent(st[k]));
 return "#samples"+(parts.length?"?"+parts.join("&"):"");
}
function writeHash(){state.p=page?String(page+1):"";if(touched)history.replaceState(null,"",query(state));}
function link(extra){var st={};for(var k in BLANK)st[k]="";for(var x in extra)st[x]=extra[x];return query(st);}
readHash();
var controls=root.querySelectorAll("select[data-f],input[data-f=key]");
function fill(){
 controls.forEach(function(c){var f=c.getAttribute("data-f");if(c.type==="checkbox")c.checked=state[f]==="1";else c.value=state[f];});
 input.value=state.q;
}
root.querySelectorAll("select[data-f]").forEach(function(sel){
 var f=sel.getAttribute("data-f");
 if(f!=="view"&&f!=="sort")sel.appendChild(el("option",null,"all")).value="";
 opts[f].forEach(function(o){var e=el("option",null,o[1]);e.value=o[0];sel.appendChild(e);});
 sel.addEventListener("change",function(){touched=true;state[f]=sel.value;state.row="";if(f!=="sort")state.item="";page=0;update();});
});
var key=root.querySelector("input[data-f=key]");
key.addEventListener("change",function(){touched=true;state.key=key.checked?"1":"";page=0;update();});
var input=root.querySelector("input[data-f=q]"), timer=null;
input.addEventListener("input",function(){clearTimeout(timer);timer=setTimeout(function(){touched=true;state.q=input.value;state.row="";page=0;update();},200);});
var jump=root.querySelector("input[data-f=page]");
jump.addEventListener("change",function(){touched=true;page=(parseInt(jump.value,10)||1)-1;show();});
root.querySelectorAll("button[data-p]").forEach(function(b){
 b.addEventListener("click",function(){touched=true;page+=+b.getAttribute("data-p");show();});
});
window.addEventListener("hashchange",function(){if(location.hash.indexOf("#samples")===0){touched=true;readHash();fill();update();}});
function itemKey(r){return r[1]+":"+r[3];}
function itemIndex(){
 if(!items){items={};for(var i=0;i<R.length;i++){var k=itemKey(R[i]);(items[k]||(items[k]=[])).push(i);}}
 return items;
}
function cellOk(r){
 var c=C[r[0]];
 if(state.cell!==""&&String(r[0])!==state.cell)return false;
 if(state.train!==""&&(c.train_template||"base")!==state.train)return false;
 if(state.test!==""&&c.test_template!==state.test)return false;
 return !(state.view==="compare"&&state.key&&kind(c)==="");
}
function keep(r){
 if(!cellOk(r))return false;
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
// The judge a sort or compare ranks by: the one the verdict filter names, else the primary.
function judge(){var p=state.verdict.split(":");return p.length===2?+p[0]:0;}
function rank(i){
 var r=R[i], j=judge(), v=r[8]&&r[8][j];
 if(state.sort==="verdict")return v==null?3:v[0]==null?2:v[0]?0:1;
 if(state.sort==="score")return v==null||v[1]==null?1:-v[1];
 if(!lengths){lengths=new Int32Array(S.length);for(var k=0;k<S.length;k++)lengths[k]=S[k].length;}
 var n=r[6]>=0?lengths[r[6]]:-1;
 return state.sort==="short"?(n<0?1e9:n):-n;
}
function sortBy(a,score){if(!state.sort)return a;var s=a.map(score);return a.map(function(x,i){return i;}).sort(function(x,y){return s[x]-s[y]||x-y;}).map(function(i){return a[i];});}
function hl(parent,tag,text){
 var e=el(tag);parent.appendChild(e);
 var q=state.q.toLowerCase(), low=q?text.toLowerCase():"";
 if(!q||low.length!==text.length){e.textContent=text;return e;}
 var at=0,i;
 while((i=low.indexOf(q,at))>=0){
  if(i>at)e.appendChild(document.createTextNode(text.slice(at,i)));
  e.appendChild(el("mark",null,text.slice(i,i+q.length)));at=i+q.length;
 }
 if(at<text.length)e.appendChild(document.createTextNode(text.slice(at)));
 return e;
}
function badges(parent,r){
 if(!r[8])return;
 var v=el("div");
 r[8].forEach(function(x,k){
  var name=verdictName(x), b=el("span","verdict "+name.replace(" ",""),J[k]+": "+name+(x&&x[1]!=null?" (score "+x[1]+")":""));
  if(x&&x[2]>=0)b.title=S[x[2]];
  v.appendChild(b);
 });
 parent.appendChild(v);
}
function markOf(parent,c){var k=kind(c);if(k)parent.appendChild(el("span","mark "+k,KIND[k]));}
function anchor(text,href){var a=el("a",null,text);a.setAttribute("href",href);return a;}
function card(i){
 var r=R[i], c=C[r[0]], d=el("div","sample"+(state.row===String(i)?" target":"")), head=el("div","head");
 d.setAttribute("data-row",String(i));
 var who=el("strong");markOf(who,c);who.appendChild(document.createTextNode(c.label));head.appendChild(who);
 head.appendChild(el("span",null,D.benchmarks[r[1]]+(r[2]!=null?" · "+r[2]:"")+" · item "+r[3]));
 head.appendChild(el("span",null,c.base_model));
 var links=el("span","links");
 links.appendChild(anchor("compare across cells",link({view:"compare",item:itemKey(r)})));
 links.appendChild(anchor("link to this sample",link({row:String(i)})));
 head.appendChild(links);
 d.appendChild(head);
 badges(d,r);
 var cols=el("div","cols"), left=el("div"), right=el("div");
 left.appendChild(el("h4",null,"prompt as rendered"));
 if(r[5]>=0)hl(left,"pre",S[r[5]]);else left.appendChild(el("pre",null,"(not generated yet) "+S[r[4]]));
 right.appendChild(el("h4",null,"response"));
 if(r[6]>=0)hl(right,"pre",S[r[6]]);else right.appendChild(el("pre",null,"(no response yet)"));
 if(r[7]>=0){right.appendChild(el("h4",null,"reference"));right.appendChild(el("pre",null,S[r[7]]));}
 cols.appendChild(left);cols.appendChild(right);d.appendChild(cols);
 return d;
}
function compareCard(k){
 var rows=itemIndex()[k].filter(function(i){return cellOk(R[i]);});
 rows=rows.map(function(i,n){return [ORDER[kind(C[R[i][0]])],n,i];}).sort(function(a,b){return a[0]-b[0]||a[1]-b[1];}).map(function(x){return x[2];});
 var r=R[rows[0]], d=el("div","sample compare"), head=el("div","head");
 d.setAttribute("data-item",k);
 head.appendChild(el("strong",null,D.benchmarks[r[1]]+(r[2]!=null?" · "+r[2]:"")+" · item "+r[3]));
 head.appendChild(el("span",null,rows.length+" cells"));
 var links=el("span","links");links.appendChild(anchor("link to this comparison",link({view:"compare",item:k,key:state.key})));
 head.appendChild(links);d.appendChild(head);
 d.appendChild(el("h4",null,"query"));hl(d,"pre",S[r[4]]);
 var side=el("div","side");
 rows.forEach(function(i){
  var x=R[i], c=C[x[0]], col=el("div",kind(c)||null);col.setAttribute("data-cell",String(x[0]));
  var who=el("div");markOf(who,c);who.appendChild(el("strong",null,c.label));col.appendChild(who);
  badges(col,x);
  if(x[6]>=0)hl(col,"pre",S[x[6]]);else col.appendChild(el("pre",null,"(no response yet)"));
  if(x[5]>=0){var det=el("details");det.appendChild(el("summary",null,"prompt as rendered"));hl(det,"pre",S[x[5]]);col.appendChild(det);}
  side.appendChild(col);
 });
 d.appendChild(side);
 return d;
}
function show(){
 var per=state.view==="compare"?PAGE_ITEMS:PAGE, pages=Math.max(1,Math.ceil(shown.length/per));
 page=Math.min(Math.max(page,0),pages-1);
 var frag=document.createDocumentFragment();
 shown.slice(page*per,(page+1)*per).forEach(function(x){frag.appendChild(state.view==="compare"?compareCard(x):card(x));});
 list.textContent="";list.appendChild(frag);
 count.textContent=(state.view==="compare"?shown.length+" prompts compared across cells, from ":"")+
  hits.length+" of "+R.length+" samples · page "+(page+1)+" of "+pages;
 jump.value=String(page+1);jump.max=String(pages);
 root.querySelectorAll("button[data-p=\"-1\"]").forEach(function(b){b.disabled=page===0;});
 root.querySelectorAll("button[data-p=\"1\"]").forEach(function(b){b.disabled=page>=pages-1;});
 writeHash();
 root.setAttribute("data-renders",String(++renders));
}
function update(){
 hits=[];
 if(state.row!==""&&R[+state.row]){hits=[+state.row];}
 else if(state.item!==""&&itemIndex()[state.item]){state.view="compare";hits=itemIndex()[state.item].filter(function(i){return cellOk(R[i]);});}
 else for(var i=0;i<R.length;i++)if(keep(R[i]))hits.push(i);
 if(state.view==="compare"){
  var at={}, keys=[];
  hits.forEach(function(i){var k=itemKey(R[i]);if(!(k in at)){at[k]=keys.length;keys.push(k);}});
  if(state.sort){
   // an item ranks by its best cell: most unsafe, highest score, longest (or shortest) response
   var best={};hits.forEach(function(i){var k=itemKey(R[i]),s=rank(i);if(!(k in best)||s<best[k])best[k]=s;});
   keys=sortBy(keys,function(k){return best[k];});
  }
  shown=keys;
 }else shown=sortBy(hits,rank);
 show();
}
fill();
update();
root.setAttribute("data-ready-ms",String(Math.round(performance.now())));  // from navigation: loading included
root.setAttribute("data-viewer-ms",String(Math.round(performance.now()-T0)));  // this script's own work
if(opened){var t=state.row!==""&&list.querySelector(".sample");(t||document.getElementById("samples-heading")).scrollIntoView();}
})();
"""


def sample_section() -> str:
    """The viewer's markup and scripts, placed last in report.html (its CSS goes into the page's style element)."""
    return (f"{VIEW_HTML}\n<script src=\"{SAMPLES_FILE}\"></script>\n<script>{VIEW_JS}</script>")
