<?php
// This file is part of Moodle - https://moodle.org/
//
// Moodle is free software: you can redistribute it and/or modify
// it under the terms of the GNU General Public License as published by
// the Free Software Foundation, either version 3 of the License, or
// (at your option) any later version.
//
// Moodle is distributed in the hope that it will be useful,
// but WITHOUT ANY WARRANTY; without even the implied warranty of
// MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
// GNU General Public License for more details.
//
// You should have received a copy of the GNU General Public License
// along with Moodle.  If not, see <https://www.gnu.org/licenses/>.

/**
 * Version information for logstore_tsdb.
 *
 * @package    logstore_tsdb
 * @copyright  2025 moodle-tsdb-shipper contributors
 * @license    https://www.gnu.org/copyleft/gpl.html GNU GPL v3 or later
 */

defined('MOODLE_INTERNAL') || die();

$plugin->component = 'logstore_tsdb';
$plugin->version   = 2025060100;
$plugin->release   = '0.1.0';
// Moodle 4.5 LTS (2024100700) is the oldest version supported.
$plugin->requires  = 2024100700;
// 4.5 LTS to 5.1; the store only uses interfaces that have been stable since Moodle 2.7.
$plugin->supported = [405, 501];
$plugin->maturity  = MATURITY_BETA;
