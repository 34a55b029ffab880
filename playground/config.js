// Deployment settings for the playground. Served as a static page on AWS (S3, CloudFront, ...), set
// apiBase to the API's URL, for example "https://abc123.execute-api.eu-west-1.amazonaws.com/prod".
// Empty means the page's own origin (what `sdq up` serves). A URL typed on the connect form wins.
window.SDQ_PLAYGROUND = { apiBase: "" };
