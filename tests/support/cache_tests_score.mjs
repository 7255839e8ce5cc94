// Scores a results file of the http-tests/cache-tests suite with the suite's own test
// list: every test whose kind is "required" (the suite's default) counts, and passes when
// its result is `true`. Prints {"required": N, "passed": M, "failed": [ids]} as JSON.
//   node cache_tests_score.mjs SUITE_DIR RESULTS.json
import fs from 'fs'
import path from 'path'
import { pathToFileURL } from 'url'

const [suiteDir, resultsFile] = process.argv.slice(2)
const index = pathToFileURL(path.join(suiteDir, 'tests', 'index.mjs')).href
const { default: suites } = await import(index)
const results = JSON.parse(fs.readFileSync(resultsFile, 'utf8'))
let required = 0
let passed = 0
const failed = []
for (const suite of suites) {
  for (const test of suite.tests) {
    if (test.browser_only || (test.kind || 'required') !== 'required' || !(test.id in results)) continue
    required++
    if (results[test.id] === true) passed++
    else failed.push(test.id)
  }
}
console.log(JSON.stringify({ required, passed, failed }))
