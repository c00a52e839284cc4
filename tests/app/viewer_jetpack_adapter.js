// The one jetpack method circuit-tracer's viewer calls that npm's d3-jetpack 2.1.0 lacks: the viewer's own
// jetpack build (transformer-circuits.pub's jetpack_2024-07-20.js, on no package registry) gives the object
// d3.conventions() returns a drawAxis(selection) that draws the x and y axes into that selection.
(function () {
  var conventions = d3.conventions;
  d3.conventions = function (c) {
    c = conventions(c);
    c.drawAxis = function (sel) {
      sel = sel || c.svg;
      sel.append("g").attr("class", "x axis").attr("transform", "translate(0," + c.height + ")").call(c.xAxis);
      sel.append("g").attr("class", "y axis").call(c.yAxis);
    };
    return c;
  };
})();
